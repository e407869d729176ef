"""What a connection closing on an error says, in each state (protocol/state.py)."""

from __future__ import annotations

from shardmq.errors import MQTTError, ProtocolViolation, UnsupportedProtocolVersion
from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.packets import Connack, Disconnect
from shardmq.protocol.state import ConnectionState, closing_packet

S = ConnectionState


def wire(answer: tuple[Connack | Disconnect, int] | None) -> object:
    """The answer as the client decodes it."""
    assert answer is not None
    packet, version = answer
    (out,) = Decoder(server=False, version=version).feed(encode(packet, version))
    return out


def test_before_connack_the_answer_is_a_refusing_connack() -> None:
    err = MQTTError(ReasonCode.NOT_AUTHORIZED, "who are you")
    ack = wire(closing_packet(err, S.CONNECTING, MQTT5, True))
    assert isinstance(ack, Connack) and not ack.session_present
    assert ack.reason_code == ReasonCode.NOT_AUTHORIZED
    assert ack.properties.reason_string == "who are you"
    answer = closing_packet(err, S.CONNECTING, MQTT311, True)
    assert answer is not None
    # 3.1.1 CONNACK: flags 0, return code 5 "not authorized", no properties
    assert encode(*answer) == bytes((0x20, 2, 0, 5))


def test_unsupported_level_is_answered_in_the_311_format() -> None:
    """[MQTT-3.1.2-2]"""
    err = UnsupportedProtocolVersion(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
    answer = closing_packet(err, S.AWAIT_CONNECT, 0, True)
    assert answer is not None and answer[1] == MQTT311
    # return code 1: unacceptable protocol version
    assert encode(*answer) == bytes((0x20, 2, 0, 1))


def test_malformed_311_connect_gets_no_connack() -> None:
    """[MQTT-3.1.4-1]: the server closes without a CONNACK."""
    err = ProtocolViolation(ReasonCode.MALFORMED_PACKET)
    assert closing_packet(err, S.AWAIT_CONNECT, MQTT311, True) is None
    assert closing_packet(err, S.AWAIT_CONNECT, 0, True) is None  # not even a version


def test_after_connack_v5_gets_disconnect_311_a_plain_close() -> None:
    err = ProtocolViolation(ReasonCode.TOPIC_ALIAS_INVALID, "alias 0")
    dis = wire(closing_packet(err, S.CONNECTED, MQTT5, True))
    assert isinstance(dis, Disconnect) and dis.reason_code == ReasonCode.TOPIC_ALIAS_INVALID
    assert dis.properties.reason_string == "alias 0"
    assert closing_packet(err, S.CONNECTED, MQTT311, True) is None


def test_no_reason_string_when_the_client_asked_for_no_problem_information() -> None:
    err = ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "details")
    dis = wire(closing_packet(err, S.CONNECTED, MQTT5, False))
    assert isinstance(dis, Disconnect) and dis.properties.reason_string is None


def test_codes_a_packet_cannot_carry_are_mapped() -> None:
    """A CONNACK cannot carry 0x8E; the mapping picks a code it can."""
    err = MQTTError(ReasonCode.SESSION_TAKEN_OVER)
    ack = wire(closing_packet(err, S.CONNECTING, MQTT5, True))
    assert isinstance(ack, Connack) and ack.reason_code != ReasonCode.SESSION_TAKEN_OVER
    assert ack.reason_code >= 0x80
