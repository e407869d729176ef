"""QoS 0/1/2 flows in both directions, flow control and packet identifiers.

paho-mqtt covers the ordinary flows; ``RawClient`` plays the side whose
acknowledgements must be withheld, duplicated or wrong, which paho will not do.
Each test starts its own broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardmq.protocol.constants import MQTT5, ReasonCode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
)
from tests.helpers import BrokerThread, RawClient, expect, expect_silence, wait_for

# -- helpers --------------------------------------------------------------------


def raw_connect(raw: RawClient, client_id: str, clean_start: bool = True, **props: Any) -> Connack:
    raw.send_packet(
        Connect(
            client_id,
            protocol_version=raw.version,
            clean_start=clean_start,
            properties=Properties(**props),
        )
    )
    ack = expect(raw, Connack)
    assert ack.reason_code == ReasonCode.SUCCESS, ack
    return ack


def raw_subscribe(raw: RawClient, topic: str, qos: int, packet_id: int = 1) -> None:
    raw.send_packet(Subscribe(packet_id, [Subscription(topic, qos)]))
    ack = expect(raw, Suback)
    assert ack.reason_codes == [qos]


def raw_persistent(
    raw_clients: Callable[..., RawClient], bt: BrokerThread, cid: str, version: int
) -> tuple[RawClient, Connack]:
    """A raw client on a session that outlives the connection (Clean Start 0;
    v5 Session Expiry 300 s, 3.1.1 CleanSession 0)."""
    raw = raw_clients(bt.port, version)
    return raw, raw_connect(raw, cid, clean_start=False, session_expiry_interval=300)


def wait_offline(bt: BrokerThread, client_id: str) -> None:
    """Wait until the broker has seen the connection of ``client_id`` end."""

    def gone() -> bool:
        return all(c.client_id != client_id for c in bt.broker._shard.connections)

    wait_for(lambda: bt.call(gone))


# -- QoS both ways -----------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_qos_end_to_end(broker, clients, version, qos):
    """A QoS n PUBLISH is acknowledged to the publisher by its QoS flow (PUBACK /
    PUBREC-PUBREL-PUBCOMP) and delivered at QoS n to a QoS 2 subscriber."""
    sub = clients(broker.port, version=version)
    sub.connect()
    sub.subscribe("t/qos", 2)
    pub = clients(broker.port, version=version)
    pub.connect()
    result = pub.publish("t/qos", b"payload", qos=qos)  # waits for the flow's last ack
    if qos and version == MQTT5:
        assert not result.is_failure
    msg = sub.get()
    assert (msg.payload, msg.qos) == (b"payload", qos)
    sub.expect_nothing(0.3)


@pytest.mark.parametrize("sub_qos", [0, 1])
def test_delivery_downgraded_to_subscription_qos(broker, clients, version, sub_qos):
    """[MQTT-3.8.4-8] spec 3.8.4: messages are delivered at min(publish QoS,
    granted QoS)."""
    sub = clients(broker.port, version=version)
    sub.connect()
    sub.subscribe("t/down", sub_qos)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/down", b"q1", qos=1)
    pub.publish("t/down", b"q2", qos=2)
    got = [(m.payload, m.qos) for m in (sub.get(), sub.get())]
    assert got == [(b"q1", min(1, sub_qos)), (b"q2", sub_qos)]


@pytest.mark.parametrize("qos", [1, 2])
def test_outbound_flow_completes(broker, clients, raw_clients, version, qos):
    """Broker -> subscriber: QoS 1 ends with PUBACK; QoS 2 goes PUBREC -> PUBREL
    (same id) -> PUBCOMP. A completed flow is forgotten: nothing is resent when
    the session resumes (spec 4.3.2, 4.3.3 sender side)."""
    raw, _ = raw_persistent(raw_clients, broker, "flow", version)
    raw_subscribe(raw, "t/f", qos)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/f", b"m", qos=qos)
    msg = expect(raw, Publish)
    assert (msg.payload, msg.qos, msg.dup) == (b"m", qos, False)
    if qos == 1:
        raw.send_packet(Puback(msg.packet_id))
    else:
        raw.send_packet(Pubrec(msg.packet_id))
        assert expect(raw, Pubrel).packet_id == msg.packet_id
        raw.send_packet(Pubcomp(msg.packet_id))
    expect_silence(raw, 0.3)
    raw.close()
    wait_offline(broker, "flow")

    again, ack = raw_persistent(raw_clients, broker, "flow", version)
    assert ack.session_present is True
    expect_silence(again, 0.5)


# -- inbound QoS 2 -------------------------------------------------------------------


def test_inbound_qos2_exactly_once(broker, clients, raw_clients, version):
    """Spec 4.3.3 (receiver side): a QoS 2 PUBLISH resent (DUP) before PUBREL is acknowledged
    again but not delivered again; PUBREL -> PUBCOMP; subscribers get one copy."""
    sub = clients(broker.port, version=version)
    sub.connect()
    sub.subscribe("t/once", 2)
    raw = raw_clients(broker.port, version)
    raw_connect(raw, "p2")
    raw.send_packet(Publish("t/once", b"once", qos=2, packet_id=7))
    assert expect(raw, Pubrec).packet_id == 7
    raw.send_packet(Publish("t/once", b"once", qos=2, packet_id=7, dup=True))
    assert expect(raw, Pubrec).packet_id == 7
    raw.send_packet(Pubrel(7))
    comp = expect(raw, Pubcomp)
    assert (comp.packet_id, comp.reason_code) == (7, ReasonCode.SUCCESS)
    assert sub.get().payload == b"once"
    sub.expect_nothing()


def test_inbound_qos2_packet_id_reusable_after_pubcomp(broker, clients, raw_clients, version):
    """Spec 4.3.3 / 2.2.1: once PUBCOMP is sent the packet id is free again; a new
    PUBLISH reusing it is a new message and is delivered."""
    sub = clients(broker.port, version=version)
    sub.connect()
    sub.subscribe("t/reuse", 2)
    raw = raw_clients(broker.port, version)
    raw_connect(raw, "reuse")
    for payload in (b"first", b"second"):
        raw.send_packet(Publish("t/reuse", payload, qos=2, packet_id=5))
        assert expect(raw, Pubrec).packet_id == 5
        raw.send_packet(Pubrel(5))
        assert expect(raw, Pubcomp).packet_id == 5
    assert [sub.get().payload, sub.get().payload] == [b"first", b"second"]


def test_pubrel_unknown_packet_id(broker, raw_clients, version):
    """Spec 3.7.2.1: PUBREL for an id with no QoS 2 flow is answered with PUBCOMP
    0x92 Packet Identifier not found (v5); 3.1.1 has only a plain PUBCOMP."""
    raw = raw_clients(broker.port, version)
    raw_connect(raw, "pr")
    raw.send_packet(Pubrel(99))
    comp = expect(raw, Pubcomp)
    assert comp.packet_id == 99
    if version == MQTT5:
        assert comp.reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


# -- resending --------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_unacknowledged_resent_with_dup_on_reconnect(broker, clients, raw_clients, version, qos):
    """[MQTT-4.4.0-1] on a resumed session, unacknowledged PUBLISHes are resent
    with their original packet id and [MQTT-3.3.1-1] DUP set."""
    raw, _ = raw_persistent(raw_clients, broker, "dup", version)
    raw_subscribe(raw, "t/r", qos)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/r", b"unacked", qos=qos)
    first = expect(raw, Publish)
    assert first.dup is False
    raw.close()  # no PUBACK / PUBREC
    wait_offline(broker, "dup")

    again, ack = raw_persistent(raw_clients, broker, "dup", version)
    assert ack.session_present is True
    resent = expect(again, Publish)
    assert resent.dup is True
    assert (resent.packet_id, resent.payload, resent.qos, resent.topic) == (
        first.packet_id,
        b"unacked",
        qos,
        "t/r",
    )


def test_no_resend_on_live_v5_connection(broker, clients, raw_clients):
    """[MQTT-4.4.0-1] (v5): resending happens only on reconnect, never on a live
    connection, however long the acknowledgement takes."""
    raw = raw_clients(broker.port)
    raw_connect(raw, "live")
    raw.send_packet(Subscribe(1, [Subscription("t/1", 1), Subscription("t/2", 2)]))
    expect(raw, Suback)
    pub = clients(broker.port)
    pub.connect()
    pub.publish("t/1", b"q1", qos=1)
    pub.publish("t/2", b"q2", qos=2)
    assert {expect(raw, Publish).payload, expect(raw, Publish).payload} == {b"q1", b"q2"}
    expect_silence(raw, 2.0)


def test_pubrel_resent_on_reconnect(broker, clients, raw_clients, version):
    """[MQTT-4.4.0-1] a QoS 2 message whose PUBREC arrived but whose PUBCOMP did
    not is continued with PUBREL (same id) on reconnect, not a new PUBLISH."""
    raw, _ = raw_persistent(raw_clients, broker, "rel", version)
    raw_subscribe(raw, "t/rel", 2)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/rel", b"m", qos=2)
    msg = expect(raw, Publish)
    raw.send_packet(Pubrec(msg.packet_id))
    assert expect(raw, Pubrel).packet_id == msg.packet_id
    raw.close()  # no PUBCOMP
    wait_offline(broker, "rel")

    again, ack = raw_persistent(raw_clients, broker, "rel", version)
    assert ack.session_present is True
    assert expect(again, Pubrel).packet_id == msg.packet_id
    again.send_packet(Pubcomp(msg.packet_id))
    expect_silence(again, 0.3)


def test_pubcomp_before_pubrec_does_not_complete_the_flow(broker, clients, raw_clients, version):
    """[MQTT-4.3.3-3] (3.1.1 [MQTT-4.3.3-1]): the sender treats a QoS 2 PUBLISH as
    unacknowledged until its PUBREC. A PUBCOMP arriving where the PUBREC is due
    completes nothing: the message is still resent with DUP on reconnect, and its
    flow then completes normally."""
    raw, _ = raw_persistent(raw_clients, broker, "early-comp", version)
    raw_subscribe(raw, "t/ec", 2)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/ec", b"exactly once", qos=2)
    first = expect(raw, Publish)
    raw.send_packet(Pubcomp(first.packet_id))  # out of turn
    raw.close()
    wait_offline(broker, "early-comp")

    again, ack = raw_persistent(raw_clients, broker, "early-comp", version)
    assert ack.session_present is True
    resent = expect(again, Publish)
    assert (resent.packet_id, resent.payload, resent.dup) == (first.packet_id, first.payload, True)
    again.send_packet(Pubrec(resent.packet_id))
    assert expect(again, Pubrel).packet_id == resent.packet_id
    again.send_packet(Pubcomp(resent.packet_id))
    expect_silence(again, 0.3)


# -- flow control -------------------------------------------------------------------


def test_client_receive_maximum_limits_inflight(broker, clients, raw_clients):
    """[MQTT-3.3.4-9] (v5): no more unacknowledged QoS 1/2 PUBLISHes than the
    client's Receive Maximum; acknowledging one lets the next one through."""
    raw = raw_clients(broker.port)
    raw_connect(raw, "rm", receive_maximum=2)
    raw_subscribe(raw, "t/rm", 1)
    pub = clients(broker.port)
    pub.connect()
    for i in range(4):
        pub.publish("t/rm", f"m{i}".encode(), qos=1)
    first, second = expect(raw, Publish), expect(raw, Publish)
    assert (first.payload, second.payload) == (b"m0", b"m1")
    expect_silence(raw, 0.5)
    raw.send_packet(Puback(first.packet_id))
    third = expect(raw, Publish)
    assert third.payload == b"m2"
    expect_silence(raw, 0.3)
    raw.send_packet(Puback(second.packet_id))
    assert expect(raw, Publish).payload == b"m3"


def test_resend_on_reconnect_respects_new_receive_maximum(broker, clients, raw_clients):
    """[MQTT-3.3.4-9] (v5): the resends on reconnect count against the Receive
    Maximum of the new connection (spec 4.9: the send quota is not preserved
    across Network Connections and is re-initialised with each one); the rest
    are resent, original ids and DUP, as acknowledgements free the quota."""
    raw = raw_clients(broker.port)
    raw_connect(raw, "rq", clean_start=False, session_expiry_interval=300, receive_maximum=3)
    raw_subscribe(raw, "t/rq", 1)
    pub = clients(broker.port)
    pub.connect()
    for i in range(3):
        pub.publish("t/rq", f"m{i}".encode(), qos=1)
    for _ in range(3):
        expect(raw, Publish)  # none acknowledged
    raw.close()
    wait_offline(broker, "rq")

    again = raw_clients(broker.port)
    raw_connect(again, "rq", clean_start=False, session_expiry_interval=300, receive_maximum=1)
    first = expect(again, Publish)
    assert (first.payload, first.dup) == (b"m0", True)
    expect_silence(again, 0.5)
    again.send_packet(Puback(first.packet_id))
    assert expect(again, Publish).payload == b"m1"


def test_broker_receive_maximum_exceeded(make_broker, raw_clients):
    """Spec 3.3.4 / [MQTT-3.3.4-7] (v5): a client with more unreleased QoS 2 PUBLISHes
    than the broker's Receive Maximum (announced in CONNACK) gets DISCONNECT 0x93."""
    bt = make_broker(receive_maximum=2)
    raw = raw_clients(bt.port)
    ack = raw_connect(raw, "flood")
    assert ack.properties.receive_maximum == 2
    for pid in (1, 2):
        raw.send_packet(Publish("t/flood", b"x", qos=2, packet_id=pid))
        assert expect(raw, Pubrec).packet_id == pid
    raw.send_packet(Publish("t/flood", b"x", qos=2, packet_id=3))
    dis = expect(raw, Disconnect)
    assert dis.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    assert raw.closed()


def test_publish_above_maximum_qos(make_broker, raw_clients, version):
    """Spec 3.2.2.3.4: Maximum QoS 1 is announced (v5) and a QoS 2 PUBLISH gets
    DISCONNECT 0x9B; a 3.1.1 client, which cannot be told, is disconnected
    (Mosquitto's ``max_qos`` behaviour)."""
    bt = make_broker(maximum_qos=1)
    raw = raw_clients(bt.port, version)
    ack = raw_connect(raw, "hiq")
    if version == MQTT5:
        assert ack.properties.maximum_qos == 1
    raw.send_packet(Publish("t/q", b"x", qos=2, packet_id=1))
    if version == MQTT5:
        assert expect(raw, Disconnect).reason_code == ReasonCode.QOS_NOT_SUPPORTED
    assert raw.closed()


# -- packet identifiers ------------------------------------------------------------------


def test_outbound_packet_ids_nonzero_and_unique(broker, clients, raw_clients, version):
    """[MQTT-2.2.1-4] outbound QoS > 0 PUBLISHes carry a non-zero packet id not in
    use by another in-flight message, also when the counter wraps past 65535.

    The wrap is provoked by moving the session's id counter (broker internals):
    sending 65,535 messages would be too slow for this suite.
    """
    raw = raw_clients(broker.port, version)
    raw_connect(raw, "ids")
    raw_subscribe(raw, "t/id", 1)
    pub = clients(broker.port, version=version)
    pub.connect()
    for i in range(3):
        pub.publish("t/id", f"a{i}".encode(), qos=1)
    ids = [expect(raw, Publish).packet_id for _ in range(3)]

    def move_counter() -> None:
        broker.broker._shard.sessions["ids"].next_packet_id = 65534

    broker.call(move_counter)
    for i in range(4):
        pub.publish("t/id", f"b{i}".encode(), qos=1)
    ids += [expect(raw, Publish).packet_id for _ in range(4)]  # none acknowledged
    assert 0 not in ids
    assert len(set(ids)) == len(ids), ids
    assert 65535 in ids  # the counter did wrap
