"""MQTT 5.0 properties end to end: opaque binary data, user properties, request
/response, message expiry, topic aliases in both directions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from tests.helpers import BrokerThread, Client, RawClient

ClientFactory = Callable[..., Client]

ALL_BYTES = bytes(range(256))
OPAQUE = ALL_BYTES + b"\xff\xfe\xc3\x28\x00\xed\xa0\x80" + b"\x00" * 3  # invalid UTF-8, NULs


def _pair(broker: BrokerThread, clients: ClientFactory, version: int = 5) -> tuple[Client, Client]:
    sub = clients(broker.port, version=version)
    sub.connect()
    pub = clients(broker.port, version=version)
    pub.connect()
    return sub, pub


#: raw clients of the running test, closed even when an assertion fails
_OPEN: list[RawClient] = []


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _raw(port: int, client_id: str, props: Properties | None = None) -> RawClient:
    raw = RawClient(port, version=5)
    _OPEN.append(raw)
    raw.send_packet(Connect(client_id=client_id, properties=props))
    connack = raw.recv_packet()
    assert isinstance(connack, Connack) and connack.reason_code == 0, connack
    return raw


def _expect_disconnect(raw: RawClient, code: int) -> None:
    try:
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect), pkt
        assert pkt.reason_code == code, hex(pkt.reason_code)
        assert raw.closed()
    finally:
        raw.close()


# -- opaque binary data ----------------------------------------------------------------


def test_payload_is_opaque_bytes(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    sub, pub = _pair(broker, clients, version)
    sub.subscribe("bin/p", qos=1)
    pub.publish("bin/p", OPAQUE, qos=1)
    assert sub.get().payload == OPAQUE


def test_correlation_data_is_opaque_bytes(broker: BrokerThread, clients: ClientFactory) -> None:
    sub, pub = _pair(broker, clients)
    sub.subscribe("bin/c")
    pub.publish("bin/c", b"x", properties={"CorrelationData": OPAQUE})
    assert sub.get().properties.CorrelationData == OPAQUE


# -- user properties, format indicator, content type ----------------------------------


def test_repeated_user_property_keys_kept_in_order(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """[MQTT-3.3.2-17], [MQTT-3.3.2-18]: forwarded unaltered, order kept."""
    pairs = [("k", "1"), ("k", "2"), ("a", "x"), ("k", "3")]
    sub, pub = _pair(broker, clients)
    sub.subscribe("up/t")
    pub.publish("up/t", b"x", properties={"UserProperty": pairs})
    assert sub.get().properties.UserProperty == pairs


def test_payload_format_indicator_and_content_type_forwarded(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    sub, pub = _pair(broker, clients)
    sub.subscribe("pf/t")
    props = {"PayloadFormatIndicator": 1, "ContentType": "application/json; charset=utf-8"}
    pub.publish("pf/t", b'{"a": 1}', properties=props)
    got = sub.get().properties
    assert got.PayloadFormatIndicator == 1
    assert got.ContentType == "application/json; charset=utf-8"


# -- request / response ----------------------------------------------------------------


def test_response_topic_and_correlation_data_forwarded(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    sub, pub = _pair(broker, clients)
    sub.subscribe("rr/req")
    pub.publish(
        "rr/req", b"q", properties={"ResponseTopic": "rr/reply/1", "CorrelationData": b"\x01id"}
    )
    got = sub.get().properties
    assert got.ResponseTopic == "rr/reply/1"
    assert got.CorrelationData == b"\x01id"


def test_response_information_when_requested(broker: BrokerThread, clients: ClientFactory) -> None:
    c = clients(broker.port, client_id="asker", properties={"RequestResponseInformation": 1})
    _, _, props = c.connect()
    assert props.ResponseInformation == "response/asker"


def test_no_response_information_unless_requested(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    c = clients(broker.port, client_id="quiet")
    _, _, props = c.connect()
    assert not hasattr(props, "ResponseInformation")
    d = clients(broker.port, client_id="quiet0", properties={"RequestResponseInformation": 0})
    _, _, props = d.connect()
    assert not hasattr(props, "ResponseInformation")


# -- message expiry --------------------------------------------------------------------


def _offline_session(broker: BrokerThread, clients: ClientFactory, cid: str, flt: str) -> None:
    c = clients(broker.port, client_id=cid, session_expiry=300)
    c.connect()
    c.subscribe(flt, qos=1)
    c.disconnect()


def _resume(broker: BrokerThread, clients: ClientFactory, cid: str) -> Client:
    c = clients(broker.port, client_id=cid, clean_start=False, session_expiry=300)
    flags, _, _ = c.connect()
    assert flags.session_present
    return c


def test_message_expiry_counted_down_while_queued(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """[MQTT-3.3.2-6]: the forwarded interval is the received one minus the time waited."""
    _offline_session(broker, clients, "exp-count", "ex/c")
    pub = clients(broker.port)
    pub.connect()
    pub.publish("ex/c", b"x", qos=1, properties={"MessageExpiryInterval": 4})
    broker.advance(1.5)  # time spent queued, on the broker's clock
    c = _resume(broker, clients, "exp-count")
    msg = c.get()
    assert msg.payload == b"x"
    assert msg.properties.MessageExpiryInterval in (2, 3)  # 4 - 1.5 (- real time), rounded up


def test_message_expiry_forwarded_on_live_delivery(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """[MQTT-3.3.2-6]: the property is forwarded (counted down, so at most the original)."""
    sub, pub = _pair(broker, clients)
    sub.subscribe("ex/live", qos=1)
    pub.publish("ex/live", b"x", qos=1, properties={"MessageExpiryInterval": 60})
    pub.publish("ex/live", b"y", qos=1)
    first, second = sub.get(), sub.get()
    assert 0 < first.properties.MessageExpiryInterval <= 60
    assert not hasattr(second.properties, "MessageExpiryInterval")


def test_expired_message_never_delivered(broker: BrokerThread, clients: ClientFactory) -> None:
    """[MQTT-3.3.2-5]: an expired message is not sent to the subscriber."""
    _offline_session(broker, clients, "exp-gone", "ex/g")
    pub = clients(broker.port)
    pub.connect()
    pub.publish("ex/g", b"stale", qos=1, properties={"MessageExpiryInterval": 1})
    pub.publish("ex/g", b"fresh", qos=1)
    broker.advance(2.0)  # the 1 s expiry passes on the broker's clock
    c = _resume(broker, clients, "exp-gone")
    assert c.get().payload == b"fresh"
    c.expect_nothing(0.3)


# -- topic aliases ---------------------------------------------------------------------


def test_inbound_topic_alias_resolved(broker: BrokerThread, clients: ClientFactory) -> None:
    sub = clients(broker.port)
    sub.connect()
    sub.subscribe("al/in")
    raw = _raw(broker.port, "alias-in")
    raw.send_packet(Publish("al/in", b"1", properties=Properties(topic_alias=3)))
    raw.send_packet(Publish("", b"2", properties=Properties(topic_alias=3)))
    got = [sub.get(), sub.get()]
    assert [(m.topic, m.payload) for m in got] == [("al/in", b"1"), ("al/in", b"2")]
    for m in got:  # the alias is the publisher's, never forwarded
        assert not hasattr(m.properties, "TopicAlias")
    raw.close()


def test_inbound_topic_alias_can_be_remapped(broker: BrokerThread, clients: ClientFactory) -> None:
    """Spec 3.3.2.3.4: a PUBLISH with a topic and an alias in use replaces the mapping."""
    sub = clients(broker.port)
    sub.connect()
    sub.subscribe("al/re/#")
    raw = _raw(broker.port, "alias-remap")
    raw.send_packet(Publish("al/re/1", b"1", properties=Properties(topic_alias=1)))
    raw.send_packet(Publish("al/re/2", b"2", properties=Properties(topic_alias=1)))
    raw.send_packet(Publish("", b"3", properties=Properties(topic_alias=1)))
    got = [(m.topic, m.payload) for m in (sub.get(), sub.get(), sub.get())]
    assert got == [("al/re/1", b"1"), ("al/re/2", b"2"), ("al/re/2", b"3")]


def test_unknown_topic_alias_is_protocol_error(broker: BrokerThread) -> None:
    raw = _raw(broker.port, "alias-unknown")
    raw.send_packet(Publish("", b"x", properties=Properties(topic_alias=5)))
    _expect_disconnect(raw, 0x82)


def test_topic_alias_above_maximum_is_invalid(make_broker: Callable[..., BrokerThread]) -> None:
    """Spec 3.3.2.3.4: an alias above the Topic Alias Maximum in CONNACK -> 0x94."""
    bt = make_broker(topic_alias_maximum=4)
    ok = _raw(bt.port, "alias-max-ok")
    ok.send_packet(Publish("al/max", b"x", properties=Properties(topic_alias=4)))
    ok.send_packet(Publish("", b"y", qos=1, packet_id=1, properties=Properties(topic_alias=4)))
    ack = ok.recv_packet()
    assert ack.packet_id == 1 and ack.reason_code < 0x80
    ok.close()
    raw = _raw(bt.port, "alias-max")
    raw.send_packet(Publish("al/max", b"x", properties=Properties(topic_alias=5)))
    _expect_disconnect(raw, 0x94)


def test_topic_alias_zero_is_invalid(broker: BrokerThread) -> None:
    """[MQTT-3.3.2-8]: alias 0 is not permitted."""
    raw = _raw(broker.port, "alias-zero")
    raw.send_packet(Publish("al/zero", b"x", properties=Properties(topic_alias=0)))
    _expect_disconnect(raw, 0x94)


def test_outbound_topic_alias_used(broker: BrokerThread, clients: ClientFactory) -> None:
    raw = _raw(broker.port, "alias-out", Properties(topic_alias_maximum=5))
    raw.send_packet(Subscribe(1, [Subscription("al/out")]))
    assert isinstance(raw.recv_packet(), Suback)
    pub = clients(broker.port)
    pub.connect()
    pub.publish("al/out", b"1", qos=1)
    pub.publish("al/out", b"2", qos=1)
    first: Any = raw.recv_packet()
    second: Any = raw.recv_packet()
    assert first.topic == "al/out" and first.payload == b"1"
    alias = first.properties.topic_alias
    assert alias is not None and 1 <= alias <= 5
    assert second.topic == "" and second.properties.topic_alias == alias
    assert second.payload == b"2"
    raw.close()


def test_outbound_topic_aliases_within_client_maximum(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """Spec 3.1.2.11.8: never an alias above the client's Topic Alias Maximum (1 here)."""
    raw = _raw(broker.port, "alias-out-1", Properties(topic_alias_maximum=1))
    raw.send_packet(Subscribe(1, [Subscription("al/lim/+")]))
    assert isinstance(raw.recv_packet(), Suback)
    pub = clients(broker.port)
    pub.connect()
    for topic in ("al/lim/a", "al/lim/b", "al/lim/b", "al/lim/a"):
        pub.publish(topic, topic, qos=1)
    seen: dict[int, str] = {}
    for _ in range(4):
        pkt: Any = raw.recv_packet()
        alias = pkt.properties.topic_alias
        assert alias in (None, 1), alias
        if pkt.topic:
            if alias:
                seen[alias] = pkt.topic
            topic = pkt.topic
        else:
            topic = seen[alias]
        assert topic.encode() == pkt.payload


def test_no_outbound_alias_without_client_maximum(
    broker: BrokerThread, clients: ClientFactory
) -> None:
    """Spec 3.1.2.11.8: no alias to a client that did not announce a Topic Alias Maximum."""
    raw = _raw(broker.port, "alias-none")
    raw.send_packet(Subscribe(1, [Subscription("al/none")]))
    assert isinstance(raw.recv_packet(), Suback)
    pub = clients(broker.port)
    pub.connect()
    pub.publish("al/none", b"1", qos=1)
    pub.publish("al/none", b"2", qos=1)
    for _ in range(2):
        pkt: Any = raw.recv_packet()
        assert pkt.topic == "al/none" and pkt.properties.topic_alias is None
    raw.close()


def test_subscription_identifier_in_client_publish_is_protocol_error(
    broker: BrokerThread,
) -> None:
    """[MQTT-3.3.4-6]."""
    raw = _raw(broker.port, "sid-pub")
    raw.send_packet(Publish("sid/p", b"x", properties=Properties(subscription_identifiers=[3])))
    _expect_disconnect(raw, 0x82)


# -- Response Topic and Payload Format Indicator -----------------------------------------


@pytest.mark.parametrize("response_topic", ["reply/#", "reply/+/x", "+"])
def test_response_topic_with_wildcard_is_a_protocol_error(
    broker: BrokerThread, clients: ClientFactory, response_topic: str
) -> None:
    """[MQTT-3.3.2-14]: the Response Topic is a topic name; one with wildcards is a
    Protocol Error: DISCONNECT 0x82, and the message is not forwarded."""
    sub = clients(broker.port)
    sub.connect()
    sub.subscribe("rt/#", 1)
    raw = _raw(broker.port, "bad-response-topic")
    raw.send_packet(
        Publish(
            "rt/req", b"q", qos=1, packet_id=1, properties=Properties(response_topic=response_topic)
        )
    )
    _expect_disconnect(raw, 0x82)
    pub = clients(broker.port)
    pub.connect()
    pub.publish("rt/marker", b"m", qos=1)
    assert sub.get().topic == "rt/marker"  # the request never reached the subscriber


def test_will_response_topic_with_wildcard_refused(broker: BrokerThread) -> None:
    """The will becomes a PUBLISH, so its Response Topic follows [MQTT-3.3.2-14] too:
    the CONNECT is refused with 0x82 rather than a will accepted that could not be
    sent correctly."""
    raw = RawClient(broker.port, version=5)
    _OPEN.append(raw)
    will = Will("w/t", b"w", properties=Properties(response_topic="r/#"))
    raw.send_packet(Connect("bad-will-rt", will=will))
    ack = raw.recv_packet()
    assert isinstance(ack, Connack) and ack.reason_code == 0x82
    assert raw.closed()


@pytest.mark.parametrize("indicator", [2, 0xFF])
def test_payload_format_indicator_other_values_forwarded_unaltered(
    broker: BrokerThread, clients: ClientFactory, indicator: int
) -> None:
    """[MQTT-3.3.2-4] leaves it to the receiver whether to refuse; Mosquitto and EMQX
    forward a Payload Format Indicator other than 0 and 1 unaltered, and so do we
    (paho cannot send one, so a raw client publishes)."""
    sub = _raw(broker.port, "pfi-sub")
    sub.send_packet(Subscribe(1, [Subscription("pfi/t", 1)]))
    assert isinstance(sub.recv_packet(), Suback)
    pub = _raw(broker.port, "pfi-pub")
    pub.send_packet(
        Publish(
            "pfi/t",
            b"p",
            qos=1,
            packet_id=3,
            properties=Properties(payload_format_indicator=indicator),
        )
    )
    ack = pub.recv_packet()
    assert isinstance(ack, Puback) and ack.reason_code == 0
    msg = sub.recv_packet()
    assert isinstance(msg, Publish) and msg.properties.payload_format_indicator == indicator
