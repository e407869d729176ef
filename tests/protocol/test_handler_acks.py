"""The acknowledgement flows (protocol/handlers/acks.py), without sockets: a
Session, packet ids, and what the handlers answer and change."""

from __future__ import annotations

from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.handlers.acks import on_puback, on_pubcomp, on_pubrec, on_pubrel
from shardmq.protocol.packets import Pubrel
from shardmq.protocol.session import Message, Outbound, Session


def session_with(*flights: tuple[int, int]) -> Session:
    s = Session("c", 100, True, False)
    for pid, qos in flights:
        msg = Message("t", b"x", qos, False, None, None, None)
        s.put_inflight(pid, Outbound(msg, qos, False, None))
    return s


def test_puback_ends_only_a_qos1_flow() -> None:
    s = session_with((1, 1), (2, 2))
    assert on_puback(s, 2) is False and 2 in s.inflight  # a QoS 2 flow is not ended by PUBACK
    assert on_puback(s, 9) is False
    assert on_puback(s, 1) is True and 1 not in s.inflight


def test_qos2_flow_needs_pubrec_then_pubcomp() -> None:
    s = session_with((5, 2))
    assert on_pubcomp(s, 5) is False and 5 in s.inflight  # PUBCOMP before PUBREC [MQTT-4.3.3-3]
    freed, reply = on_pubrec(s, 5, 0, MQTT5)
    assert freed is False and isinstance(reply, Pubrel) and reply.packet_id == 5
    assert s.inflight[5].released
    assert on_pubcomp(s, 5) is True and 5 not in s.inflight


def test_pubrec_with_an_error_ends_the_flow() -> None:
    s = session_with((5, 2))
    assert on_pubrec(s, 5, ReasonCode.UNSPECIFIED_ERROR, MQTT5) == (True, None)
    assert 5 not in s.inflight


def test_pubrec_for_an_unknown_id() -> None:
    s = session_with()
    _, reply = on_pubrec(s, 7, 0, MQTT5)
    assert reply is not None and reply.reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
    _, reply = on_pubrec(s, 7, 0, MQTT311)
    assert reply is not None and reply.reason_code == 0  # 3.1.1 has no reason codes
    assert on_pubrec(s, 7, 0x80, MQTT5) == (False, None)  # an error PUBREC is not answered


def test_pubrel_releases_the_inbound_id_once() -> None:
    s = session_with()
    s.add_inbound(3)
    first = on_pubrel(s, 3, MQTT5)
    assert first.reason_code == ReasonCode.SUCCESS and 3 not in s.inbound_qos2
    again = on_pubrel(s, 3, MQTT5)
    assert again.reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
    assert on_pubrel(s, 3, MQTT311).reason_code == 0


def test_pubrel_carries_a_hook_verdict_and_its_reason_when_asked() -> None:
    s = session_with()
    s.add_inbound(4)
    comp = on_pubrel(s, 4, MQTT5, ReasonCode.NOT_AUTHORIZED, "no", problem_info=True)
    assert comp.properties is not None and comp.properties.reason_string == "no"
    s.add_inbound(5)
    quiet = on_pubrel(s, 5, MQTT5, ReasonCode.NOT_AUTHORIZED, "no", problem_info=False)
    assert quiet.properties is None or not quiet.properties.reason_string
