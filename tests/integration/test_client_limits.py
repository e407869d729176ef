"""Limits per client and per source address: publish rate, subscriptions,
connection rate; each refusal counted in $SYS and logged once a minute.
Rates are set so low that no refill happens within a test, and time is moved
with the broker's clock (BrokerThread.advance), never waited for."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Unsubscribe,
)
from tests.helpers import BrokerThread, RawClient, expect, expect_silence

MakeBroker = Callable[..., BrokerThread]
#: one token every 100 s: the first message passes (into debt), the next is over
SLOW = 0.01

_OPEN: list[RawClient] = []


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(port: int, version: int, cid: str) -> RawClient:
    raw = RawClient(port, version)
    _OPEN.append(raw)
    raw.send_packet(Connect(cid, protocol_version=version))
    assert expect(raw, Connack).reason_code == 0
    return raw


def suback(raw: RawClient, pid: int, *filters: str) -> list[int]:
    raw.send_packet(Subscribe(pid, [Subscription(f, 1) for f in filters]))
    ack = expect(raw, Suback)
    return list(ack.reason_codes)


def stats(bt: BrokerThread) -> Any:
    return bt.broker._shard.stats


# -- max_subscriptions ------------------------------------------------------------------


def test_max_subscriptions_refuses_the_one_too_many(make_broker: MakeBroker, version: int) -> None:
    bt = make_broker(max_subscriptions=2)
    raw = connect(bt.port, version, "subs")
    over = ReasonCode.QUOTA_EXCEEDED if version == 5 else 0x80
    assert suback(raw, 1, "a", "b", "c") == [1, 1, over]
    assert suback(raw, 2, "a") == [1]  # replacing one of its own is not one more
    raw.send_packet(Unsubscribe(3, ["a"]))
    raw.recv_packet()
    assert suback(raw, 4, "c") == [1]
    assert bt.call(lambda: stats(bt).subscriptions_refused) == 1
    assert bt.call(bt.broker._shard.sys_figures)["limits/subscriptions"] == 1


def test_max_subscriptions_unset_is_unlimited(make_broker: MakeBroker) -> None:
    bt = make_broker()
    raw = connect(bt.port, 5, "many")
    assert suback(raw, 1, *(f"t/{i}" for i in range(200))) == [1] * 200


# -- publish rate -----------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["publish_rate", "publish_byte_rate"])
def test_over_the_publish_rate_v5_gets_disconnect_0x96(
    make_broker: MakeBroker, setting: str
) -> None:
    bt = make_broker(**{setting: SLOW})
    raw = connect(bt.port, 5, "fast")
    raw.send_packet(Publish("r/1", b"first", qos=1, packet_id=1))
    assert isinstance(expect(raw, Puback), Puback)
    raw.send_packet(Publish("r/1", b"second", qos=1, packet_id=2))
    pkt = expect(raw, Disconnect)
    assert pkt.reason_code == ReasonCode.MESSAGE_RATE_TOO_HIGH
    assert raw.closed()
    assert bt.call(lambda: stats(bt).rate_limited) == 1
    assert bt.call(bt.broker._shard.sys_figures)["limits/publish_rate"] == 1


def test_over_the_publish_rate_v311_is_closed(make_broker: MakeBroker) -> None:
    bt = make_broker(publish_rate=SLOW)
    raw = connect(bt.port, 4, "fast311")
    raw.send_packet(Publish("r/1", b"first", qos=1, packet_id=1))
    expect(raw, Puback)
    raw.send_packet(Publish("r/1", b"second", qos=1, packet_id=2))
    assert raw.closed()


def test_the_rate_refills_with_time(make_broker: MakeBroker) -> None:
    bt = make_broker(publish_rate=SLOW)
    raw = connect(bt.port, 5, "patient")
    raw.send_packet(Publish("r/1", b"first", qos=1, packet_id=1))
    expect(raw, Puback)
    bt.advance(200)  # the debt of one message, and a token more
    raw.send_packet(Publish("r/1", b"later", qos=1, packet_id=2))
    assert expect(raw, Puback).packet_id == 2


def test_pause_stops_reading_until_the_client_is_within_its_rate(
    make_broker: MakeBroker,
) -> None:
    """publish_rate_action = "pause": the message over the rate is still taken;
    what follows is not read until the pause ends (here: ended by hand, as
    its timer would)."""
    bt = make_broker(publish_rate=SLOW, publish_rate_action="pause")
    raw = connect(bt.port, 5, "paused")
    raw.send_packet(Publish("r/1", b"1", qos=1, packet_id=1))
    expect(raw, Puback)
    raw.send_packet(Publish("r/1", b"2", qos=1, packet_id=2))
    assert expect(raw, Puback).packet_id == 2
    conn = bt.call(lambda: next(iter(bt.broker._shard.connections)))
    assert bt.call(lambda: conn.reading_paused and conn._throttle is not None)
    raw.send_packet(Publish("r/1", b"3", qos=1, packet_id=3))
    expect_silence(raw, 0.3)

    def end_pause() -> None:
        conn._throttle.cancel()
        conn._unthrottle()

    bt.call(end_pause)
    assert expect(raw, Puback).packet_id == 3


def test_no_rate_set_means_no_bucket(make_broker: MakeBroker) -> None:
    """The hot path pays nothing without a limit: no bucket per connection."""
    bt = make_broker()
    connect(bt.port, 5, "free")
    conn = bt.call(lambda: next(iter(bt.broker._shard.connections)))
    assert conn.rate is None


# -- connection rate --------------------------------------------------------------------


def test_connection_rate_closes_before_connect_is_read(make_broker: MakeBroker) -> None:
    bt = make_broker(connection_rate=SLOW)
    connect(bt.port, 5, "first")  # into debt
    refused = RawClient(bt.port, 5)
    _OPEN.append(refused)
    try:
        refused.send_packet(Connect("second"))
    except OSError:
        pass  # closed already: the CONNECT could not even be sent
    assert refused.recv_packet() is None  # closed, no CONNACK
    assert bt.call(lambda: stats(bt).connections_refused) == 1
    assert bt.call(bt.broker._shard.sys_figures)["limits/connection_rate"] == 1
    bt.advance(300)
    connect(bt.port, 5, "later")


# -- logging ----------------------------------------------------------------------------


def test_each_refusal_is_logged_once_a_minute_per_client(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bt = make_broker(max_subscriptions=1)
    raw = connect(bt.port, 5, "noisy")
    with caplog.at_level(logging.WARNING, logger="shardmq.shard"):
        assert suback(raw, 1, "a", "b", "c", "d")[1:] == [ReasonCode.QUOTA_EXCEEDED] * 3
        other = connect(bt.port, 5, "other")
        suback(other, 1, "a", "b")
    lines = [r.getMessage() for r in caplog.records if "max_subscriptions" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "noisy" in lines[0] and "other" in lines[1]
    assert bt.call(lambda: stats(bt).subscriptions_refused) == 4


# -- max_connections per listener -------------------------------------------------------


def test_a_listener_max_connections_holds_on_that_listener_only(
    make_broker: MakeBroker, version: int
) -> None:
    from shardmq.config import Listener
    from tests.helpers import wait_for
    from tests.transports.helpers import listener_port

    bt = make_broker(listeners=(Listener("tcp", 0, max_connections=1),))
    port = listener_port(bt)
    first = connect(port, version, "one")
    busy = RawClient(port, version)
    _OPEN.append(busy)
    busy.send_packet(Connect("two", protocol_version=version))
    busy_code = ReasonCode.SERVER_BUSY if version == 5 else ReasonCode.SERVER_UNAVAILABLE
    assert expect(busy, Connack).reason_code == busy_code  # 3.1.1: return code 3
    connect(bt.port, version, "main-1")  # the main port has no such limit
    connect(bt.port, version, "main-2")
    first.close()
    wait_for(lambda: bt.call(lambda: len(bt.broker._shard.connections)) == 2)
    connect(port, version, "again")
