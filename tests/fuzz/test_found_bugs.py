"""Broker bugs the live fuzz found, each reduced to a deterministic reproducer
and kept as a regression test:

- a Message Expiry Interval of 4294967295 was forwarded as 4294967296 (the
  float deadline rounded up), which the encoder cannot write; a message
  forwarded at once could carry a second more than its publisher gave it;
- a transport closed under a pending write (a peer reset whose
  connection_lost had not run yet) made Shard.flush raise, leaving every
  later connection of the worker unflushed for good.
"""

from __future__ import annotations

from typing import Any

from shardmq.protocol.constants import MQTT5
from shardmq.protocol.fanout import PublishTemplate
from shardmq.protocol.outbound import remaining_expiry
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)
from shardmq.protocol.session import Message
from tests.helpers import BrokerThread, Client, RawClient, expect

EXPIRY_MAX = 0xFFFFFFFF


def test_max_message_expiry_survives_forwarding() -> None:
    # A PUBLISH with Message Expiry Interval 4294967295 at loop time 1.1: the
    # broker stores expiry_at = now + interval and, delivering at once,
    # computes ceil(expiry_at - now). Any loop time whose sum rounds up does
    # it; about half of them do.
    now = 1.1
    props = Properties(message_expiry_interval=EXPIRY_MAX)
    msg = Message("t", b"x", 0, False, props, now + EXPIRY_MAX, "publisher")
    left = remaining_expiry(msg, now)
    PublishTemplate("t", b"x", props).encode(MQTT5, 0, False, False, 0, None, 0, True, left)
    assert left == EXPIRY_MAX


def test_publisher_of_max_message_expiry_gets_its_pubacks() -> None:
    bt = BrokerThread().start()
    sub = Client(bt.port)
    pub = RawClient(bt.port)
    try:
        sub.connect()
        sub.subscribe("t", qos=1)
        pub.send_packet(Connect(client_id="publisher"))
        expect(pub, Connack)
        props = Properties(message_expiry_interval=EXPIRY_MAX)
        for pid in range(1, 41):  # no failure in 40 has odds of about 1 in 10^12
            pub.send_packet(Publish("t", b"x", 1, packet_id=pid, properties=props))
            assert expect(pub, Puback).packet_id == pid
    finally:
        sub.disconnect()
        pub.close()
        bt.stop()


def test_forwarded_message_expiry_never_grows() -> None:
    now = 30 / 7  # a loop time at which now + 60 - now > 60 in floating point
    msg = Message("t", b"x", 0, False, Properties(message_expiry_interval=60), now + 60, None)
    assert remaining_expiry(msg, now) == 60


def test_flush_survives_a_transport_closed_under_it() -> None:
    bt = BrokerThread().start()
    errors: list[dict[str, Any]] = []
    good = Client(bt.port)
    victim = RawClient(bt.port)
    try:
        assert bt.loop is not None
        bt.call(lambda: bt.loop.set_exception_handler(lambda loop, ctx: errors.append(ctx)))
        # the victim subscribes first, so a fan-out writes to it before the good client
        victim.send_packet(Connect(client_id="victim"))
        expect(victim, Connack)
        victim.send_packet(Subscribe(1, [Subscription("t")]))
        expect(victim, Suback)
        good.connect()
        good.subscribe("t")

        def reset_then_publish() -> None:
            # What uvloop does when the peer resets: the handle closes at once,
            # connection_lost runs on a later iteration. A fan-out in between
            # still sees the victim connected and writes to it.
            shard = bt.broker._shard
            assert shard is not None
            (conn,) = [c for c in shard.connections if c.client_id == "victim"]
            conn.transport.abort()
            bt.broker.publish("t", b"one")

        bt.call(reset_then_publish)
        assert good.get(2.0).payload == b"one"
        # and it keeps receiving afterwards
        bt.call(lambda: bt.broker.publish("t", b"two"))
        assert good.get(2.0).payload == b"two"
        assert errors == []
    finally:
        good.disconnect()
        victim.close()
        bt.stop()
