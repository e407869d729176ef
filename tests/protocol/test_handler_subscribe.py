"""The SUBSCRIBE/UNSUBSCRIBE, DISCONNECT and AUTH handlers, bytes in, without sockets."""

from __future__ import annotations

import pytest

from shardmq.errors import HookError, ProtocolViolation
from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.handlers.auth import check_auth
from shardmq.protocol.handlers.disconnect import on_disconnect
from shardmq.protocol.handlers.subscribe import (
    apply,
    check_subscribe,
    suback_codes,
    unsuback_codes,
    verdicts,
)
from shardmq.protocol.packets import Auth, Disconnect, Properties, Subscribe, Subscription
from shardmq.protocol.session import Session


def received(packet: object, version: int = MQTT5) -> object:
    """``packet`` as a connected broker decodes it from the wire."""
    (out,) = Decoder(server=True, version=version).feed(encode(packet, version))
    return out


def subscribe(*subs: Subscription, ids: list[int] | None = None) -> Subscribe:
    pkt = received(Subscribe(1, list(subs), Properties(subscription_identifiers=ids)))
    assert isinstance(pkt, Subscribe)
    return pkt


def test_subscription_identifiers_refused_when_not_available() -> None:
    packet = subscribe(Subscription("a", 1), ids=[7])
    check_subscribe(packet, identifiers_available=True)
    with pytest.raises(ProtocolViolation) as info:
        check_subscribe(packet, identifiers_available=False)
    assert info.value.reason_code == ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED


def test_no_local_on_a_shared_subscription_is_a_protocol_error() -> None:
    """[MQTT-3.8.3-4]"""
    check_subscribe(subscribe(Subscription("a", 1, no_local=True)), True)
    with pytest.raises(ProtocolViolation) as info:
        check_subscribe(subscribe(Subscription("$share/g/a", 1, no_local=True)), True)
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR


def test_hook_answers_become_one_verdict_per_entry() -> None:
    assert verdicts(True, 3) is None and verdicts(None, 3) is None
    assert verdicts(False, 2) == [ReasonCode.NOT_AUTHORIZED] * 2
    assert verdicts(HookError(ReasonCode.QUOTA_EXCEEDED), 2) == [ReasonCode.QUOTA_EXCEEDED] * 2
    mixed = verdicts([True, False, 1, ReasonCode.TOPIC_FILTER_INVALID], 4)
    assert mixed is not None
    assert apply(mixed, 0, 2) == (None, 2)
    assert apply(mixed, 1, 2) == (ReasonCode.NOT_AUTHORIZED, 2)
    assert apply(mixed, 2, 2) == (None, 1)  # granted at most QoS 1
    assert apply(mixed, 3, 2) == (ReasonCode.TOPIC_FILTER_INVALID, 2)
    assert apply(mixed, 9, 2) == (None, 2)  # a short list allows the rest
    assert apply(None, 0, 1) == (None, 1)


def test_reason_codes_per_version() -> None:
    codes = [0, 1, ReasonCode.NOT_AUTHORIZED, ReasonCode.PROTOCOL_ERROR]
    assert suback_codes(codes, MQTT311) == [0, 1, 0x80, 0x80]  # 3.1.1 has one failure code
    v5 = suback_codes(codes, MQTT5)
    assert v5[:3] == [0, 1, ReasonCode.NOT_AUTHORIZED]
    assert v5[3] == ReasonCode.UNSPECIFIED_ERROR  # not a SUBACK code
    assert unsuback_codes([0, ReasonCode.NO_SUBSCRIPTION_EXISTED, ReasonCode.NOT_AUTHORIZED]) == [
        0,
        ReasonCode.NO_SUBSCRIPTION_EXISTED,
        ReasonCode.NOT_AUTHORIZED,
    ]


def session(expiry: int) -> Session:
    s = Session("c", 10, False, False)
    s.expiry_interval = expiry
    return s


def test_disconnect_changes_the_session_expiry_within_the_cap() -> None:
    s = session(60)
    pkt = received(Disconnect(0, Properties(session_expiry_interval=7200)))
    assert on_disconnect(s, pkt, MQTT5, max_expiry=3600) is False  # type: ignore[arg-type]
    assert s.expiry_interval == 3600


def test_disconnect_setting_expiry_after_zero_is_a_protocol_error() -> None:
    """[MQTT-3.14.2-2]"""
    pkt = received(Disconnect(0, Properties(session_expiry_interval=60)))
    with pytest.raises(ProtocolViolation):
        on_disconnect(session(0), pkt, MQTT5, max_expiry=3600)  # type: ignore[arg-type]
    zero = received(Disconnect(0, Properties(session_expiry_interval=0)))
    assert on_disconnect(session(0), zero, MQTT5, max_expiry=3600) is False  # type: ignore[arg-type]


def test_only_reason_0x04_keeps_the_will() -> None:
    """[MQTT-3.14.4-3]"""
    with_will = received(Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE))
    assert on_disconnect(session(0), with_will, MQTT5, 0) is True  # type: ignore[arg-type]
    normal = received(Disconnect())
    assert on_disconnect(session(0), normal, MQTT5, 0) is False  # type: ignore[arg-type]
    assert on_disconnect(None, received(Disconnect(), MQTT311), MQTT311, 0) is False  # type: ignore[arg-type]


def auth(code: int, method: str | None = "SCRAM") -> Auth:
    pkt = received(Auth(code, Properties(authentication_method=method)))
    assert isinstance(pkt, Auth)
    return pkt


def test_auth_continues_the_exchange_or_reauthenticates() -> None:
    assert check_auth(auth(ReasonCode.CONTINUE_AUTHENTICATION), MQTT5, False, "SCRAM") is False
    assert check_auth(auth(ReasonCode.RE_AUTHENTICATE), MQTT5, True, "SCRAM") is True
    assert check_auth(auth(ReasonCode.CONTINUE_AUTHENTICATION), MQTT5, True, "SCRAM") is True


@pytest.mark.parametrize(
    ("packet_code", "method", "connected", "conn_method"),
    [
        (ReasonCode.CONTINUE_AUTHENTICATION, "OTHER", False, "SCRAM"),  # [MQTT-4.12.0-5]
        (ReasonCode.CONTINUE_AUTHENTICATION, "SCRAM", True, None),  # never started
        (ReasonCode.RE_AUTHENTICATE, "SCRAM", False, "SCRAM"),  # not yet connected
        (ReasonCode.SUCCESS, "SCRAM", True, "SCRAM"),  # the client may not send 0x00
    ],
)
def test_auth_protocol_errors(
    packet_code: int, method: str, connected: bool, conn_method: str | None
) -> None:
    with pytest.raises(ProtocolViolation) as info:
        check_auth(auth(packet_code, method), MQTT5, connected, conn_method)
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR
