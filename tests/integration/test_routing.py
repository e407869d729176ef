"""Routing through real sockets: wildcards, $-topics, $SYS, retained messages,
shared subscriptions, subscription options and topic filter validation.

Negative checks avoid sleeping where they can: after the messages that must
not arrive, the same publisher sends a marker that must, and the marker has
to be the next message the subscriber sees (one publisher's messages are
routed in order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Subscribe,
    Subscription,
    Unsubscribe,
)
from tests.helpers import BrokerThread, Client, RawClient, wait_for

ClientFactory = Callable[..., Client]


def _codes(rcs: list[Any]) -> list[int]:
    """paho hands back ReasonCode objects (or ints for 3.1.1 in old versions)."""
    return [int(getattr(rc, "value", rc)) for rc in rcs]


def _pair(broker: BrokerThread, clients: ClientFactory, version: int) -> tuple[Client, Client]:
    sub = clients(broker.port, version=version)
    sub.connect()
    pub = clients(broker.port, version=version)
    pub.connect()
    return sub, pub


def _next_topic(client: Client) -> str:
    return str(client.get().topic)


# -- wildcards -----------------------------------------------------------------


def test_plus_matches_exactly_one_level(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    sub, pub = _pair(broker, clients, version)
    sub.subscribe("w/+/x")
    sub.subscribe("marker")
    pub.publish("w/1/x", b"one")
    pub.publish("w//x", b"empty level")
    pub.publish("w/1/2/x", b"two levels")
    pub.publish("w/x", b"no level")
    pub.publish("marker")
    assert _next_topic(sub) == "w/1/x"
    assert _next_topic(sub) == "w//x"
    assert _next_topic(sub) == "marker"


def test_hash_matches_any_depth(broker: BrokerThread, clients: ClientFactory, version: int) -> None:
    sub, pub = _pair(broker, clients, version)
    sub.subscribe("h/#")
    sub.subscribe("marker")
    for topic in ("h/1", "h/1/2/3", "hx/1", "other/h/1"):
        pub.publish(topic)
    pub.publish("marker")
    assert [_next_topic(sub) for _ in range(3)] == ["h/1", "h/1/2/3", "marker"]


def test_hash_matches_parent_level(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    """'a/#' matches 'a' itself (spec 4.7.1.2)."""
    sub, pub = _pair(broker, clients, version)
    sub.subscribe("p/#")
    pub.publish("p", b"parent")
    msg = sub.get()
    assert (msg.topic, msg.payload) == ("p", b"parent")


def test_dollar_topics_not_matched_by_leading_wildcards(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    """[MQTT-4.7.2-1] '#' and '+/...' skip topics starting with '$'; '$x/#' matches."""
    hash_sub, pub = _pair(broker, clients, version)
    plus_sub = clients(broker.port, version=version)
    plus_sub.connect()
    dollar_sub = clients(broker.port, version=version)
    dollar_sub.connect()
    hash_sub.subscribe("#")
    plus_sub.subscribe("+/d")
    plus_sub.subscribe("marker")
    dollar_sub.subscribe("$app/#")
    pub.publish("$app/d", b"dollar")
    pub.publish("marker")
    assert dollar_sub.get().topic == "$app/d"
    assert _next_topic(hash_sub) == "marker"
    assert _next_topic(plus_sub) == "marker"


# -- $SYS ------------------------------------------------------------------------

SYS_TOPICS = (
    "version",
    "uptime",
    "clients/connected",
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
)


def test_sys_topics_published_and_counting(
    make_broker: Callable[..., BrokerThread], clients: ClientFactory
) -> None:
    bt = make_broker(sys_interval=0.2)
    sys_sub = clients(bt.port)
    sys_sub.connect()
    sys_sub.subscribe("$SYS/#")
    seen: dict[str, bytes] = {}

    def collect() -> dict[str, bytes]:
        for msg in sys_sub.drain(timeout=0.05):
            seen[msg.topic] = msg.payload
        return seen

    wait_for(lambda: all(f"$SYS/broker/{t}" in collect() for t in SYS_TOPICS))
    assert seen["$SYS/broker/version"].startswith(b"shardmq")
    for name in SYS_TOPICS[2:]:
        assert int(seen[f"$SYS/broker/{name}"]) >= 0, name
    received_before = int(seen["$SYS/broker/messages/received"])

    pub = clients(bt.port)
    pub.connect()
    for i in range(3):
        pub.publish("counted", str(i), qos=1)
    wait_for(
        lambda: int(collect()["$SYS/broker/messages/received"]) >= received_before + 3,
    )


def test_sys_not_matched_by_hash(
    make_broker: Callable[..., BrokerThread], clients: ClientFactory
) -> None:
    """A '#' subscriber never sees $SYS while '$SYS/#' does (same broker, same ticks)."""
    bt = make_broker(sys_interval=0.2)
    hash_sub = clients(bt.port)
    hash_sub.connect()
    hash_sub.subscribe("#")
    sys_sub = clients(bt.port)
    sys_sub.connect()
    sys_sub.subscribe("$SYS/#")
    # more than one tick's worth: the retained snapshot plus live updates
    for _ in range(len(SYS_TOPICS) * 2 + 1):
        assert sys_sub.get().topic.startswith("$SYS/broker/")
    pub = clients(bt.port)
    pub.connect()
    pub.publish("marker")
    assert _next_topic(hash_sub) == "marker"


def test_retained_sys_not_sent_to_leading_wildcards(
    make_broker: Callable[..., BrokerThread], clients: ClientFactory
) -> None:
    """[MQTT-4.7.2-1] holds for retained messages too: a new '#' or '+/broker/#'
    subscription gets none of the retained $SYS topics."""
    bt = make_broker(sys_interval=0.2)
    pub = clients(bt.port)
    pub.connect()
    pub.publish("rs/marker", b"m", qos=1, retain=True)
    wait_for(lambda: bt.call(lambda: bt.broker.retained.get("$SYS/broker/uptime")))
    for flt in ("#", "+/broker/#"):
        late = clients(bt.port)
        late.connect()
        late.subscribe(flt)
        late.subscribe("rs/marker", retain_handling=0)
        topics = [m.topic for m in late.drain(timeout=0.1)]
        assert topics and not [t for t in topics if t.startswith("$")], (flt, topics)
        late.disconnect()


def test_clients_cannot_publish_to_sys(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    sub, pub = _pair(broker, clients, version)
    sub.subscribe("$SYS/#")
    sub.subscribe("marker")
    rc = pub.publish("$SYS/broker/fake", b"x", qos=1)
    if version == 5:
        assert int(rc.value) == 0x87
    pub.publish("marker")
    assert _next_topic(sub) == "marker"


# -- retained messages ----------------------------------------------------------


def test_retained_delivered_on_subscribe_with_retain_flag(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    _, pub = _pair(broker, clients, version)
    pub.publish("r/t", b"kept", qos=1, retain=True)
    late = clients(broker.port, version=version)
    late.connect()
    late.subscribe("r/t", qos=1)
    msg = late.get()
    assert (msg.topic, msg.payload, bool(msg.retain)) == ("r/t", b"kept", True)


def test_retained_delivered_at_min_qos_with_subscription_id(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """Retained messages on subscribe: QoS is min(message, granted) [MQTT-3.8.4-8]
    and the subscription identifier is attached."""
    _, pub = _pair(broker, clients, 5)
    pub.publish("r/q2", b"two", qos=2, retain=True)
    pub.publish("r/q0", b"zero", qos=0, retain=True)
    pub.publish("r/sync", b"s", qos=1)  # the QoS 0 one is stored before this is acked
    late = clients(broker.port)
    late.connect()
    late.subscribe("r/q2", qos=1, sub_id=9)
    msg = late.get()
    assert (msg.payload, msg.qos, bool(msg.retain)) == (b"two", 1, True)
    assert msg.properties.SubscriptionIdentifier == [9]
    late.subscribe("r/q0", qos=2)
    msg = late.get()
    assert (msg.payload, msg.qos) == (b"zero", 0)


def test_retained_empty_payload_clears(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    _, pub = _pair(broker, clients, version)
    pub.publish("r/c", b"kept", qos=1, retain=True)
    pub.publish("r/c", b"", qos=1, retain=True)
    pub.publish("r/marker", b"m", qos=1, retain=True)
    late = clients(broker.port, version=version)
    late.connect()
    late.subscribe("r/c")
    late.subscribe("r/marker")
    assert _next_topic(late) == "r/marker"
    late.expect_nothing(0.3)


def test_retained_replaced_by_newer(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    _, pub = _pair(broker, clients, version)
    pub.publish("r/n", b"old", qos=1, retain=True)
    pub.publish("r/n", b"new", qos=1, retain=True)
    late = clients(broker.port, version=version)
    late.connect()
    late.subscribe("r/n")
    assert late.get().payload == b"new"
    late.expect_nothing(0.3)


def test_retained_with_wildcard_subscribe(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    _, pub = _pair(broker, clients, version)
    for topic in ("rw", "rw/a", "rw/b/c", "rwx/a", "other"):
        pub.publish(topic, topic, qos=1, retain=True)
    late = clients(broker.port, version=version)
    late.connect()
    late.subscribe("rw/#")
    got = sorted(m.topic for m in late.drain(timeout=0.5))
    assert got == ["rw", "rw/a", "rw/b/c"]


def test_retain_handling_0_resends_on_every_subscribe(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    sub, pub = _pair(broker, clients, 5)
    pub.publish("rh/0", b"x", qos=1, retain=True)
    sub.subscribe("rh/0", retain_handling=0)
    assert sub.get().retain
    sub.subscribe("rh/0", retain_handling=0)
    assert sub.get().retain


def test_retain_handling_1_only_for_new_subscription(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    sub, pub = _pair(broker, clients, 5)
    pub.publish("rh/1", b"x", qos=1, retain=True)
    pub.publish("rh/marker", b"m", qos=1, retain=True)
    sub.subscribe("rh/1", retain_handling=1)
    assert sub.get().topic == "rh/1"
    sub.subscribe("rh/1", retain_handling=1)  # exists already: nothing resent
    sub.subscribe("rh/marker")
    assert _next_topic(sub) == "rh/marker"


def test_retain_handling_2_never_sends_retained(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    sub, pub = _pair(broker, clients, 5)
    pub.publish("rh/2", b"x", qos=1, retain=True)
    pub.publish("rh/marker2", b"m", qos=1, retain=True)
    sub.subscribe("rh/2", retain_handling=2)
    sub.subscribe("rh/marker2")
    assert _next_topic(sub) == "rh/marker2"
    pub.publish("rh/2", b"live")  # the subscription itself works
    assert sub.get().payload == b"live"


def test_retain_as_published_on_live_forward(broker: BrokerThread, clients: ClientFactory) -> None:
    """[MQTT-3.3.1-12] / [MQTT-3.3.1-13]: RETAIN kept only with RAP=1."""
    rap, pub = _pair(broker, clients, 5)
    plain = clients(broker.port)
    plain.connect()
    rap.subscribe("rap/t", retain_as_published=True)
    plain.subscribe("rap/t", retain_as_published=False)
    pub.publish("rap/t", b"r", qos=1, retain=True)
    pub.publish("rap/t", b"n", qos=1, retain=False)
    assert [(m.payload, bool(m.retain)) for m in (rap.get(), rap.get())] == [
        (b"r", True),
        (b"n", False),
    ]
    assert [(m.payload, bool(m.retain)) for m in (plain.get(), plain.get())] == [
        (b"r", False),
        (b"n", False),
    ]


def test_live_forward_clears_retain_v311(broker: BrokerThread, clients: ClientFactory) -> None:
    """3.1.1 [MQTT-3.3.1-9]: RETAIN is 0 on a message sent to an established subscription."""
    sub, pub = _pair(broker, clients, 4)
    sub.subscribe("rl/t")
    pub.publish("rl/t", b"r", qos=1, retain=True)
    assert not sub.get().retain


def test_retained_message_expiry(broker: BrokerThread, clients: ClientFactory) -> None:
    _, pub = _pair(broker, clients, 5)
    pub.publish("rx/short", b"gone", qos=1, retain=True, properties={"MessageExpiryInterval": 1})
    pub.publish("rx/long", b"kept", qos=1, retain=True, properties={"MessageExpiryInterval": 60})
    broker.advance(1.6)  # the 1 s expiry passes on the broker's clock
    late = clients(broker.port)
    late.connect()
    late.subscribe("rx/#")
    msgs = late.drain(timeout=0.5)
    assert [m.topic for m in msgs] == ["rx/long"]
    assert msgs[0].properties.MessageExpiryInterval in (59, 60)  # 60 - 1.6 (- real time)


# -- shared subscriptions -----------------------------------------------------------


def _members(broker: BrokerThread, clients: ClientFactory, n: int, flt: str) -> list[Client]:
    out = []
    for _ in range(n):
        c = clients(broker.port)
        c.connect()
        c.subscribe(flt, qos=1)
        out.append(c)
    return out


def test_shared_each_message_to_exactly_one_member_round_robin(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    a, b = _members(broker, clients, 2, "$share/g/sh/t")
    pub = clients(broker.port)
    pub.connect()
    for i in range(10):
        pub.publish("sh/t", str(i), qos=1)
    got_a = [m.payload for m in a.drain()]
    got_b = [m.payload for m in b.drain()]
    assert sorted(got_a + got_b, key=int) == [str(i).encode() for i in range(10)]
    assert len(got_a) == 5 and len(got_b) == 5


def test_shared_two_groups_each_get_a_copy(broker: BrokerThread, clients: ClientFactory) -> None:
    g1 = _members(broker, clients, 2, "$share/g1/sh/two")
    (g2,) = _members(broker, clients, 1, "$share/g2/sh/two")
    pub = clients(broker.port)
    pub.connect()
    for i in range(4):
        pub.publish("sh/two", str(i), qos=1)
    assert len(g1[0].drain()) + len(g1[1].drain()) == 4
    assert len(g2.drain()) == 4


def test_shared_subscribe_gets_no_retained(broker: BrokerThread, clients: ClientFactory) -> None:
    pub = clients(broker.port)
    pub.connect()
    pub.publish("sh/r", b"retained", qos=1, retain=True)
    (member,) = _members(broker, clients, 1, "$share/g/sh/r")
    pub.publish("sh/r", b"live", qos=1)
    assert member.get().payload == b"live"


def test_shared_and_plain_subscriptions_both_receive(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    shared = clients(broker.port, version=version)
    shared.connect()
    shared.subscribe("$share/g/sh/both", qos=1)
    plain, pub = _pair(broker, clients, version)
    plain.subscribe("sh/both", qos=1)
    pub.publish("sh/both", b"x", qos=1)
    assert shared.get().payload == b"x"
    assert plain.get().payload == b"x"


def test_shared_subscription_with_no_local_is_protocol_error(broker: BrokerThread) -> None:
    """[MQTT-3.8.3-4]: No Local on a shared subscription -> DISCONNECT 0x82."""
    raw = RawClient(broker.port, version=5)
    try:
        raw.send_packet(Connect(client_id="shared-nl"))
        assert isinstance(raw.recv_packet(), Connack)
        raw.send_packet(Subscribe(1, [Subscription("$share/g/x", no_local=True)]))
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect) and pkt.reason_code == 0x82, pkt
        assert raw.closed()
    finally:
        raw.close()


# -- subscription options and identifiers -------------------------------------------


def test_no_local(broker: BrokerThread, clients: ClientFactory) -> None:
    me, other = _pair(broker, clients, 5)
    me.subscribe("nl/t", no_local=True)
    me.publish("nl/t", b"mine", qos=1)
    other.publish("nl/t", b"theirs", qos=1)
    assert me.get().payload == b"theirs"
    me.expect_nothing(0.3)


def test_overlapping_subscriptions_one_copy_max_qos_all_ids(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """[MQTT-3.3.4-2], [MQTT-3.3.4-3], [MQTT-3.3.4-5]."""
    sub, pub = _pair(broker, clients, 5)
    sub.subscribe("ov/+", qos=0, sub_id=1)
    sub.subscribe("ov/#", qos=2, sub_id=2)
    # QoS 2 on both sides: paho hands a QoS 2 message over only at PUBREL, so the
    # marker must take the same path to be ordered after every copy of ov/b.
    sub.subscribe("marker", qos=2)
    pub.publish("ov/b", b"x", qos=2)
    pub.publish("marker", qos=2)
    copies = []
    while (msg := sub.get()).topic != "marker":
        copies.append(msg)
    assert len(copies) == 1, [(m.topic, m.qos) for m in copies]
    (msg,) = copies
    assert (msg.topic, msg.qos) == ("ov/b", 2)
    assert sorted(msg.properties.SubscriptionIdentifier) == [1, 2]


def test_same_identifier_on_overlapping_subscriptions_appears_once(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """Two overlapping subscriptions carrying the same Subscription Identifier: the
    one copy of the message carries the identifier once, not [7, 7] (spec 3.3.4
    lists the identifiers of the matching subscriptions; Mosquitto and EMQX send
    each once)."""
    sub, pub = _pair(broker, clients, 5)
    sub.subscribe("sid2/+", qos=1, sub_id=7)
    sub.subscribe("sid2/#", qos=1, sub_id=7)
    sub.subscribe("sid2/x", qos=1, sub_id=8)
    pub.publish("sid2/x", b"x", qos=1)
    msg = sub.get()
    assert sorted(msg.properties.SubscriptionIdentifier) == [7, 8]


def test_subscription_identifier_delivered(broker: BrokerThread, clients: ClientFactory) -> None:
    sub, pub = _pair(broker, clients, 5)
    sub.subscribe("sid/t", sub_id=42)
    pub.publish("sid/t", b"x")
    assert sub.get().properties.SubscriptionIdentifier == [42]


def test_unsubscribe_stops_delivery(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    sub, pub = _pair(broker, clients, version)
    sub.subscribe("us/t")
    sub.subscribe("marker")
    pub.publish("us/t", b"before")
    assert sub.get().payload == b"before"
    rcs = sub.unsubscribe("us/t")
    if version == 5:
        assert _codes(rcs) == [0]
    pub.publish("us/t", b"after")
    pub.publish("marker")
    assert _next_topic(sub) == "marker"


def test_unsubscribe_unknown_filter_v5(broker: BrokerThread, clients: ClientFactory) -> None:
    sub = clients(broker.port)
    sub.connect()
    sub.subscribe("known")
    assert _codes(sub.unsubscribe(["never/subscribed", "known"])) == [0x11, 0x00]


MALFORMED_FILTERS = ("a/#/b", "a+", "#a", "a/#x", "", "$share/g", "$share//f", "$share/a+/f")


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("topic_filter", MALFORMED_FILTERS)
def test_malformed_topic_filter_is_a_malformed_packet(
    broker: BrokerThread, clients: ClientFactory, version: int, kind: str, topic_filter: str
) -> None:
    """[MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1], [MQTT-4.8.2-1], [MQTT-4.8.2-2]:
    a SUBSCRIBE or UNSUBSCRIBE with a malformed filter is a Malformed Packet: v5
    gets DISCONNECT 0x81, 3.1.1 is closed ([MQTT-4.8.0-1] in 3.1.1), as Mosquitto
    and EMQX do. A good client subscribed on the same broker is not affected.
    paho refuses to send these filters, so a raw client does."""
    good, pub = _pair(broker, clients, version)
    good.subscribe("ok/1", 1)
    raw = RawClient(broker.port, version=version)
    try:
        raw.send_packet(Connect(client_id=f"raw-filters-{version}", protocol_version=version))
        assert isinstance(raw.recv_packet(), Connack)
        if kind == "subscribe":
            raw.send_packet(Subscribe(7, [Subscription("ok/1", 1), Subscription(topic_filter)]))
        else:
            raw.send_packet(Unsubscribe(7, ["ok/1", topic_filter]))
        answer = raw.recv_packet()
        if version == 5:
            assert isinstance(answer, Disconnect), answer
            assert answer.reason_code == 0x81
            answer = raw.recv_packet()
        assert answer is None  # closed, with no SUBACK / UNSUBACK
    finally:
        raw.close()
    pub.publish("ok/1", b"still here", qos=1)
    assert good.get().payload == b"still here"


def test_refused_filter_gets_0x8f_not_a_disconnect(make_broker, clients, version) -> None:
    """SUBACK 0x8F (3.1.1: 0x80) stays for a well-formed filter this client may
    not use: here a hook refuses it with Topic Filter Invalid; the connection
    stays up."""

    def setup(b: Any) -> None:
        @b.on_subscribe
        async def refuse(client: Any, packet: Any) -> list[int]:
            return [
                0x8F if s.topic_filter.startswith("no/") else s.qos for s in packet.subscriptions
            ]

    bt = make_broker(setup=setup)
    sub, pub = _pair(bt, clients, version)
    rcs = _codes(sub.subscribe([("no/x", 1), ("ok/+", 2)]))
    assert rcs == [0x8F if version == 5 else 0x80, 2]
    pub.publish("ok/1", b"x", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.qos) == ("ok/1", 1)
