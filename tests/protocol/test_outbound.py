"""The outbound engine (protocol/outbound.py): deliveries in, bytes out, a fake clock.

Each test builds an Outbox writing into a list, decodes what it wrote with a
client-side Decoder and checks the packets; ``now`` is a plain number, so
message expiry is tested without waiting.
"""

from __future__ import annotations

from typing import Any

from shardmq.protocol.codec import Decoder
from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.handlers.acks import on_puback, on_pubrec
from shardmq.protocol.outbound import Outbox, remaining_expiry
from shardmq.protocol.packets import Properties, Puback, Publish, Pubrel
from shardmq.protocol.session import Message, Session

T0 = 1_800_000_000.0  # the fake clock's start (wall-clock seconds)


class Stats:
    def __init__(self) -> None:
        self.messages_sent = 0
        self.messages_dropped = 0
        self.sent_qos = [0, 0, 0]
        self.dropped_queue_full = 0
        self.dropped_acl = 0
        self.dropped_expired = 0


class Client:
    """An Outbox and the client-side view of what it wrote."""

    def __init__(
        self,
        version: int = MQTT5,
        receive_maximum: int | None = None,
        max_packet: int | None = None,
        alias_max: int | None = None,
        max_inflight: int = 65535,
    ) -> None:
        self.wire: list[bytes] = []
        self.stats = Stats()
        self.outbox = Outbox(self.wire.append, self.stats)
        self.outbox.configure(version, receive_maximum, max_packet, alias_max, max_inflight)
        self.decoder = Decoder(server=False, version=version)
        self.session = Session("c", max_queued=100, drop_oldest=False, queue_qos0=False)

    def received(self) -> list[Any]:
        """Every packet written since the last call, decoded."""
        data = b"".join(self.wire)
        self.wire.clear()
        return self.decoder.feed(data)

    def deliver(
        self, msg: Message, qos: int, now: float = T0, ids: list[int] | None = None
    ) -> None:
        self.outbox.deliver(self.session, msg, qos, False, ids, now)


def message(topic: str = "a/b", qos: int = 1, expiry: int | None = None, **props: Any) -> Message:
    if expiry is not None:
        props["message_expiry_interval"] = expiry
    return Message(
        topic,
        b"payload",
        qos,
        False,
        Properties(**props),
        T0 + expiry if expiry is not None else None,
        "publisher",
    )


def test_qos0_is_written_at_once_and_counted() -> None:
    c = Client()
    c.deliver(message(qos=0), 0)
    (pkt,) = c.received()
    assert isinstance(pkt, Publish) and pkt.qos == 0 and pkt.payload == b"payload"
    assert c.stats.messages_sent == 1 and not c.session.inflight


def test_receive_maximum_queues_then_an_ack_sends_the_next() -> None:
    """[MQTT-3.3.4-9]: no more unacknowledged QoS 1 PUBLISHes than Receive Maximum."""
    c = Client(receive_maximum=2)
    for i in range(5):
        c.deliver(message(f"t/{i}"), 1)
    sent = c.received()
    assert [p.topic for p in sent] == ["t/0", "t/1"]
    assert [p.packet_id for p in sent] == [1, 2]
    assert len(c.session.pending) == 3
    # the client acknowledges the first: exactly one more goes out
    assert on_puback(c.session, 1)
    c.outbox.window_freed(c.session, T0)
    (nxt,) = c.received()
    assert nxt.topic == "t/2" and nxt.packet_id == 3
    assert len(c.session.inflight) == 2 and len(c.session.pending) == 2


def test_broker_max_inflight_caps_the_client_window() -> None:
    c = Client(receive_maximum=100, max_inflight=1)
    c.deliver(message("t/0"), 1)
    c.deliver(message("t/1"), 1)
    assert [p.topic for p in c.received()] == ["t/0"]


def test_message_expiry_counts_down_and_an_expired_one_is_never_sent() -> None:
    """[MQTT-3.3.2-6] the remaining interval is sent; [MQTT-3.3.2-5] an expired
    message is not delivered, here while it waited for the window."""
    c = Client(receive_maximum=1)
    c.deliver(message("t/0", expiry=60), 1, now=T0)
    c.deliver(message("t/1", expiry=10), 1, now=T0)  # waits: the window is full
    c.deliver(message("t/2", expiry=60), 1, now=T0)
    (first,) = c.received()
    assert first.properties.message_expiry_interval == 60
    on_puback(c.session, first.packet_id)
    c.outbox.window_freed(c.session, T0 + 30.5)  # t/1 expired meanwhile
    (nxt,) = c.received()
    assert nxt.topic == "t/2"
    assert nxt.properties.message_expiry_interval == 30  # 29.5 s left, rounded up
    assert remaining_expiry(message(expiry=5), T0 + 5) == -1


def test_expired_qos0_not_sent() -> None:
    c = Client()
    c.deliver(message(qos=0, expiry=1), 0, now=T0 + 1)
    assert c.received() == [] and c.stats.messages_sent == 0


def test_resend_after_reconnect_sets_dup_keeps_order_and_the_new_window() -> None:
    """[MQTT-4.4.0-1] resend in order with DUP; PUBREL for a released QoS 2
    flow; [MQTT-3.3.4-9] no more than the new Receive Maximum at once."""
    c = Client()
    for i in range(4):
        c.deliver(message(f"t/{i}", qos=2), 2)
    first = c.received()
    on_pubrec(c.session, first[1].packet_id, ReasonCode.SUCCESS, MQTT5)  # t/1: released
    c.received()  # the PUBREL
    # the client reconnects with a window of 2
    again = Client(receive_maximum=2)
    again.session = c.session
    again.outbox.resend(again.session, T0)
    resent = again.received()
    assert isinstance(resent[0], Publish) and resent[0].dup and resent[0].topic == "t/0"
    assert isinstance(resent[1], Pubrel) and resent[1].packet_id == first[1].packet_id
    assert len(resent) == 2
    # each freed slot sends the next unsent, in order
    assert not on_puback(again.session, 99)  # an unknown id frees nothing
    again.session.end_flight(resent[0].packet_id)
    again.outbox.window_freed(again.session, T0)
    (third,) = again.received()
    assert third.topic == "t/2" and third.dup


def test_no_resend_on_a_live_connection() -> None:
    """Resend happens only from resend(): delivering more leaves in-flight ones alone."""
    c = Client()
    c.deliver(message("t/0"), 1)
    c.deliver(message("t/1"), 1)
    assert [p.dup for p in c.received()] == [False, False]


def test_topic_aliases_assigned_up_to_the_client_maximum() -> None:
    c = Client(alias_max=1)
    for topic in ("a", "a", "b"):
        c.deliver(message(topic, qos=0), 0)
    first, second, third = c.received()
    assert first.topic == "a" and first.properties.topic_alias == 1
    # the repeat carries the alias alone (an empty topic) [MQTT-3.3.2-12]
    assert second.topic == "" and second.properties.topic_alias == 1
    assert third.topic == "b" and third.properties.topic_alias is None  # maximum reached
    assert c.outbox.aliases == {"a": 1}


def test_alias_dropped_when_it_would_exceed_the_maximum_packet_size() -> None:
    plain = Client()
    plain.deliver(message("topic", qos=0), 0)
    size = len(plain.wire[0])
    c = Client(alias_max=5, max_packet=size)  # room for the plain PUBLISH only
    c.deliver(message("topic", qos=0), 0)
    (pkt,) = c.received()
    assert pkt.properties.topic_alias is None and c.outbox.aliases == {}


def test_maximum_packet_size_discards_deliveries_that_do_not_fit() -> None:
    """[MQTT-3.1.2-25]: discarded as if delivered, and counted."""
    c = Client(max_packet=20)
    c.deliver(message("a/very/long/topic/name", qos=1), 1)
    c.deliver(message("a", qos=0), 0)
    pkts = c.received()
    assert [p.topic for p in pkts] == ["a"]
    assert c.stats.messages_dropped == 1 and not c.session.inflight


def test_v311_gets_no_properties() -> None:
    c = Client(version=MQTT311)
    c.deliver(message("t", qos=1, expiry=60, content_type="x"), 1, ids=[3])
    (pkt,) = c.received()
    assert pkt.topic == "t" and pkt.packet_id == 1


def test_control_packet_loses_reason_string_then_user_properties_to_fit() -> None:
    props = Properties(reason_string="r" * 50, user_properties=[("k", "v" * 50)])
    full = Client()
    assert full.outbox.control(Puback(1, ReasonCode.UNSPECIFIED_ERROR, props))
    big = len(full.wire[0])
    c = Client(max_packet=big - 10)
    assert c.outbox.control(Puback(1, ReasonCode.UNSPECIFIED_ERROR, props))
    (ack,) = c.received()
    assert ack.properties.reason_string is None and ack.properties.user_properties
    tiny = Client(max_packet=5)
    assert tiny.outbox.control(Puback(1, ReasonCode.UNSPECIFIED_ERROR, props))
    (bare,) = tiny.received()
    assert bare.properties.user_properties in (None, [])
    # a packet that cannot shrink enough is refused and nothing is written
    none = Client(max_packet=3)
    assert not none.outbox.control(Puback(1, ReasonCode.UNSPECIFIED_ERROR, props))
    assert none.wire == []
    assert props.reason_string is not None  # the caller's packet is left as it was


def test_topics_the_client_may_not_read_are_not_delivered() -> None:
    """Access control at delivery: a wildcard subscription does not leak a
    denied topic, live or from the queue; each refusal is counted."""
    c = Client(receive_maximum=1)
    c.outbox.readable = lambda topic: not topic.startswith("secret/")
    c.deliver(message("open/1", qos=0), 0)
    c.deliver(message("secret/1", qos=0), 0)
    c.deliver(message("open/2"), 1)  # takes the window
    c.deliver(message("secret/2"), 1)  # refused before it is queued
    assert [p.topic for p in c.received()] == ["open/1", "open/2"]
    assert not c.session.pending and c.stats.messages_dropped == 2
    # queued while the client was away (the shard queues offline sessions)
    c.session.enqueue((message("secret/3"), 1, False, None))
    c.session.enqueue((message("open/3"), 1, False, None))
    on_puback(c.session, 1)
    c.outbox.window_freed(c.session, T0)
    assert [p.topic for p in c.received()] == ["open/3"]
    assert c.stats.messages_dropped == 3
