"""The limits a v5 CONNACK advertises, their settings, and the behaviour behind
each: a broker must do what it announces (spec 3.2.2.3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardmq.protocol.codec import Decoder, decode_varint, encode, encode_varint
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Pubrec,
    Suback,
    Subscribe,
    Subscription,
)
from tests.helpers import BrokerThread, Client, RawClient, read_until_eof

ClientFactory = Callable[..., Client]
MakeBroker = Callable[..., BrokerThread]


#: raw clients of the running test, closed even when an assertion fails
_OPEN: list[RawClient] = []


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _raw(
    port: int, client_id: str, props: Properties | None = None, keep_alive: int = 60
) -> tuple[RawClient, Connack]:
    raw = RawClient(port, version=5)
    _OPEN.append(raw)
    raw.send_packet(Connect(client_id=client_id, keep_alive=keep_alive, properties=props))
    connack = raw.recv_packet()
    assert isinstance(connack, Connack) and connack.reason_code == 0, connack
    return raw, connack


def _expect_disconnect(raw: RawClient, code: int) -> None:
    try:
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect), pkt
        assert pkt.reason_code == code, hex(pkt.reason_code)
        assert raw.closed()
    finally:
        raw.close()


def _suback(raw: RawClient, subs: list[Subscription], props: Properties | None = None) -> list[int]:
    raw.send_packet(Subscribe(1, subs, props))
    pkt = raw.recv_packet()
    assert isinstance(pkt, Suback), pkt
    return list(pkt.reason_codes)


# -- what CONNACK says -----------------------------------------------------------------


def test_connack_default_limits(broker: BrokerThread, clients: ClientFactory) -> None:
    c = clients(broker.port, client_id="limits-default")
    _, _, props = c.connect()
    # absent means the spec's default: QoS 2, retain available
    assert getattr(props, "MaximumQoS", 2) == 2
    assert getattr(props, "RetainAvailable", 1) == 1
    # stated explicitly, for clients that read the property instead of assuming
    assert props.WildcardSubscriptionAvailable == 1
    assert props.SubscriptionIdentifierAvailable == 1
    assert props.SharedSubscriptionAvailable == 1
    assert props.TopicAliasMaximum == 1024
    assert props.ReceiveMaximum == 1024
    assert props.MaximumPacketSize == 16 * 1024 * 1024
    assert not hasattr(props, "ServerKeepAlive")


def test_connack_configured_limits(make_broker: MakeBroker, clients: ClientFactory) -> None:
    bt = make_broker(
        maximum_qos=1,
        retain_available=False,
        wildcard_subscription_available=False,
        subscription_identifier_available=False,
        shared_subscription_available=False,
        topic_alias_maximum=7,
        receive_maximum=10,
        max_packet_size=2000,
        server_keep_alive=30,
    )
    c = clients(bt.port, client_id="limits-configured")
    _, _, props = c.connect()
    assert props.MaximumQoS == 1
    assert props.RetainAvailable == 0
    assert props.WildcardSubscriptionAvailable == 0
    assert props.SubscriptionIdentifierAvailable == 0
    assert props.SharedSubscriptionAvailable == 0
    assert props.TopicAliasMaximum == 7
    assert props.ReceiveMaximum == 10
    assert props.MaximumPacketSize == 2000
    assert props.ServerKeepAlive == 30


def test_connack_max_keep_alive_caps_client_keep_alive(
    make_broker: MakeBroker, clients: ClientFactory
) -> None:
    bt = make_broker(max_keep_alive=10)
    c = clients(bt.port, client_id="ka-cap", keepalive=60)
    _, _, props = c.connect()
    assert props.ServerKeepAlive == 10


def test_topic_alias_maximum_zero_is_not_advertised_and_refuses_aliases(
    make_broker: MakeBroker,
) -> None:
    """Spec 3.2.2.3.8: with no maximum the client may not use aliases at all."""
    bt = make_broker(topic_alias_maximum=0)
    raw, connack = _raw(bt.port, "alias-zero-max")
    assert connack.properties.topic_alias_maximum in (None, 0)
    raw.send_packet(Publish("lim/a", b"x", properties=Properties(topic_alias=1)))
    _expect_disconnect(raw, 0x94)


# -- behaviour behind each limit -----------------------------------------------------------


def test_retain_unavailable_refuses_retained_publish(make_broker: MakeBroker) -> None:
    """[MQTT-3.3.1-11]: retain 1 when Retain Available is 0 -> DISCONNECT 0x9A."""
    bt = make_broker(retain_available=False)
    raw, _ = _raw(bt.port, "no-retain")
    raw.send_packet(Publish("lim/r", b"x", retain=False))
    raw.send_packet(Publish("lim/r", b"x", retain=True))
    _expect_disconnect(raw, 0x9A)


def test_maximum_qos_downgrades_subscription_and_refuses_higher_publish(
    make_broker: MakeBroker,
) -> None:
    """[MQTT-3.2.2-11]: granted QoS capped; a PUBLISH above it -> DISCONNECT 0x9B."""
    bt = make_broker(maximum_qos=1)
    raw, _ = _raw(bt.port, "max-qos")
    assert _suback(raw, [Subscription("lim/q", qos=2)]) == [1]
    raw.send_packet(Publish("lim/q", b"x", qos=2, packet_id=1))
    _expect_disconnect(raw, 0x9B)


def test_wildcard_unavailable_refuses_wildcard_filters(make_broker: MakeBroker) -> None:
    bt = make_broker(wildcard_subscription_available=False)
    raw, _ = _raw(bt.port, "no-wild")
    subs = [Subscription("lim/+"), Subscription("lim/plain"), Subscription("#")]
    assert _suback(raw, subs) == [0xA2, 0x00, 0xA2]
    raw.close()


def test_shared_unavailable_refuses_shared_filters(make_broker: MakeBroker) -> None:
    bt = make_broker(shared_subscription_available=False)
    raw, _ = _raw(bt.port, "no-shared")
    subs = [Subscription("$share/g/lim/s"), Subscription("lim/s")]
    assert _suback(raw, subs) == [0x9E, 0x00]
    raw.close()


def test_subscription_identifier_unavailable_disconnects(make_broker: MakeBroker) -> None:
    """Spec 3.2.2.3.13: SUBSCRIBE with an identifier -> DISCONNECT 0xA1."""
    bt = make_broker(subscription_identifier_available=False)
    raw, _ = _raw(bt.port, "no-subid")
    raw.send_packet(Subscribe(1, [Subscription("lim/i")], Properties(subscription_identifiers=[5])))
    _expect_disconnect(raw, 0xA1)


def test_receive_maximum_enforced(make_broker: MakeBroker) -> None:
    """Spec 3.3.4: more unacknowledged QoS 2 PUBLISHes than Receive Maximum -> 0x93."""
    bt = make_broker(receive_maximum=2)
    raw, connack = _raw(bt.port, "recv-max")
    assert connack.properties.receive_maximum == 2
    for pid in (1, 2):
        raw.send_packet(Publish("lim/rm", b"x", qos=2, packet_id=pid))
        assert isinstance(raw.recv_packet(), Pubrec)
    raw.send_packet(Publish("lim/rm", b"x", qos=2, packet_id=3))
    _expect_disconnect(raw, 0x93)


def test_server_keep_alive_enforced(make_broker: MakeBroker) -> None:
    """[MQTT-3.2.2-21]: the client must use the Server Keep Alive; silence past
    1.5 times it ends the connection with 0x8D."""
    bt = make_broker(server_keep_alive=1)
    raw, connack = _raw(bt.port, "ska", keep_alive=60)
    assert connack.properties.server_keep_alive == 1
    _expect_disconnect(raw, 0x8D)


# -- maximum packet size, both ways ------------------------------------------------------


def test_publish_over_max_packet_size_disconnected(make_broker: MakeBroker) -> None:
    """Spec 3.1.2.11.4 / 4.13: a packet over the broker's limit -> DISCONNECT 0x95."""
    bt = make_broker(max_packet_size=200)
    raw, connack = _raw(bt.port, "too-big")
    assert connack.properties.maximum_packet_size == 200
    raw.send_packet(Publish("lim/big", b"s" * 100, qos=1, packet_id=1))
    assert raw.recv_packet().packet_id == 1  # a packet under the limit is fine
    raw.send_packet(Publish("lim/big", b"x" * 300))
    _expect_disconnect(raw, 0x95)


def test_oversized_packet_refused_from_fixed_header(make_broker: MakeBroker) -> None:
    """Only the fixed header is sent: the broker must not wait for (or buffer) the body."""
    bt = make_broker(max_packet_size=200)
    raw, _ = _raw(bt.port, "header-only")
    raw.send(b"\x30" + encode_varint(1_000_000))
    _expect_disconnect(raw, 0x95)


@pytest.mark.parametrize("qos", [0, 1])
def test_never_send_client_more_than_its_maximum_packet_size(
    broker: BrokerThread, clients: ClientFactory, qos: int
) -> None:
    """[MQTT-3.1.2-24]: a message too large for the client is dropped for it only."""
    raw, _ = _raw(broker.port, f"small-{qos}", Properties(maximum_packet_size=100))
    assert _suback(raw, [Subscription("lim/mp", qos=qos)]) == [qos]
    other = clients(broker.port)
    other.connect()
    other.subscribe("lim/mp", qos=qos)
    pub = clients(broker.port)
    pub.connect()
    pub.publish("lim/mp", b"L" * 500, qos=1)
    pub.publish("lim/mp", b"s" * 10, qos=1)
    assert [m.payload for m in (other.get(), other.get())] == [b"L" * 500, b"s" * 10]
    pkt: Any = raw.recv_packet()
    assert isinstance(pkt, Publish) and pkt.payload == b"s" * 10
    raw.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_dropped_oversized_message_does_not_use_up_a_topic_alias(
    broker: BrokerThread, clients: ClientFactory, qos: int
) -> None:
    """A message dropped for the client's Maximum Packet Size never reached it, so
    the next message on that topic must carry the topic name (the client cannot
    know an alias it was never sent, spec 3.3.2.3.4)."""
    props = Properties(maximum_packet_size=100, topic_alias_maximum=5)
    raw, _ = _raw(broker.port, f"small-alias-{qos}", props)
    assert _suback(raw, [Subscription("lim/mpa", qos=qos)]) == [qos]
    pub = clients(broker.port)
    pub.connect()
    pub.publish("lim/mpa", b"L" * 500, qos=1)
    pub.publish("lim/mpa", b"s" * 10, qos=1)
    pkt: Any = raw.recv_packet()
    assert isinstance(pkt, Publish) and pkt.payload == b"s" * 10
    assert pkt.topic == "lim/mpa", (pkt.topic, pkt.properties.topic_alias)
    raw.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_message_that_fits_without_alias_is_delivered_within_limit(
    broker: BrokerThread, clients: ClientFactory, qos: int
) -> None:
    """[MQTT-3.1.2-24] applies to the packet as sent, and a message that fits the
    client's limit without a Topic Alias is not "too large to send" [MQTT-3.1.2-25]:
    it must arrive (without an alias, or with one only if that still fits).
    Mosquitto never sends aliases, so it delivers all three."""
    limit = 100
    props = Properties(maximum_packet_size=limit, topic_alias_maximum=5)
    raw, _ = _raw(broker.port, f"edge-alias-{qos}", props)
    assert _suback(raw, [Subscription("lim/edge", qos=qos), Subscription("lim/end")]) == [qos, 0]
    pub = clients(broker.port)
    pub.connect()
    # 98..100 bytes without an alias, 101..103 with a new one (fixed header included)
    sizes = [83, 84, 85] if qos else [85, 86, 87]
    for n in sizes:
        plain = encode(Publish("lim/edge", b"x" * n, qos=qos, packet_id=1 if qos else None), 5)
        assert len(plain) <= limit
        pub.publish("lim/edge", b"x" * n, qos=1)
    pub.publish("lim/end", b"done", qos=1)
    got = []
    while True:
        pkt: Any = raw.recv_packet()
        assert isinstance(pkt, Publish), pkt
        size = len(encode(pkt, 5))
        assert size <= limit, (size, len(pkt.payload), pkt.properties.topic_alias)
        if pkt.payload == b"done":
            break
        got.append(len(pkt.payload))
        if qos:
            raw.send_packet(Puback(pkt.packet_id))
    assert got == sizes


# -- the client's Maximum Packet Size applies to every packet --------------------------


def _frames(raw: RawClient, timeout: float = 5.0) -> list[bytes]:
    """Every whole packet the broker sends until it closes the connection, as bytes."""
    data = read_until_eof(raw.sock, timeout)
    out = []
    p = 0
    while p < len(data):
        length, q = decode_varint(data, p + 1)
        out.append(data[p : q + length])
        p = q + length
    assert p == len(data), "a truncated packet"
    return out


def _connect_limited(port: int, client_id: str, limit: int) -> RawClient:
    raw = RawClient(port, version=5)
    _OPEN.append(raw)
    raw.send_packet(Connect(client_id, properties=Properties(maximum_packet_size=limit)))
    return raw


def test_acks_and_disconnect_lose_reason_string_to_fit_the_limit(broker: BrokerThread) -> None:
    """[MQTT-3.1.2-24], [MQTT-3.4.2-2], [MQTT-3.14.2-3]: a PUBACK whose Reason String
    would take it over the client's limit of 24 bytes (our CONNACK's size) is sent
    without it (here the refusal of a $SYS publish, reason string "$SYS topics are
    read-only", 34 bytes with it), and so is the DISCONNECT that ends a protocol
    error. Every packet fits."""
    raw = _connect_limited(broker.port, "limit-24", 24)
    raw.send_packet(Publish("$SYS/x", b"p", qos=1, packet_id=5))
    # a topic alias above the broker's maximum: DISCONNECT 0x94 with a reason string
    raw.send_packet(Publish("a", b"p", properties=Properties(topic_alias=60000)))
    frames = _frames(raw)
    assert all(len(f) <= 24 for f in frames), [len(f) for f in frames]
    decoded = Decoder(server=False, version=5).feed(b"".join(frames))
    connack, puback, disconnect = decoded
    assert isinstance(connack, Connack) and connack.reason_code == 0
    assert isinstance(puback, Puback) and puback.reason_code == 0x87
    assert puback.properties.reason_string is None
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x94
    assert disconnect.properties.reason_string is None


def test_reason_string_kept_when_it_fits(broker: BrokerThread) -> None:
    """The same PUBACK keeps its Reason String when the limit allows it, so the
    previous test really measured the stripping."""
    raw = _connect_limited(broker.port, "limit-big", 1000)
    assert isinstance(raw.recv_packet(), Connack)
    raw.send_packet(Publish("$SYS/x", b"p", qos=1, packet_id=5))
    puback = raw.recv_packet()
    assert isinstance(puback, Puback) and puback.reason_code == 0x87
    assert puback.properties.reason_string


def test_connack_over_the_limit_is_not_sent(broker: BrokerThread, clients: ClientFactory) -> None:
    """[MQTT-3.1.2-24]: a client allowing 5 bytes cannot be sent any CONNACK (ours is
    at least 16 bytes): the connection is closed without one, and a connected client
    with the same id is not taken over (the check comes before the session)."""
    victim = clients(broker.port, client_id="tiny")
    victim.connect()
    raw = _connect_limited(broker.port, "tiny", 5)
    assert _frames(raw) == []
    victim.subscribe("still/here", 1)
    victim.publish("still/here", b"alive", qos=1)
    assert victim.get().payload == b"alive"
