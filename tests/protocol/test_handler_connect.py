"""The CONNECT handler (protocol/handlers/connect.py), bytes in, without sockets:
the refusals, the CONNACK properties and the broker's stated capabilities."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shardmq.config import Config
from shardmq.errors import MQTTError
from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.handlers.connect import (
    check_connect,
    connack_properties,
    negotiate,
    server_properties,
)
from shardmq.protocol.packets import Connect, Properties, Will


@dataclass(frozen=True)
class Limits:
    maximum_qos: int = 2
    retain_available: bool = True
    max_keep_alive: int = 65535
    v311_keep_alive: str = "refuse"


def received(packet: Connect) -> Connect:
    """``packet`` as the broker decodes it from the wire."""
    (out,) = Decoder(server=True).feed(encode(packet, packet.protocol_version))
    assert isinstance(out, Connect)
    return out


def refusal(packet: Connect, **limits: object) -> int | None:
    try:
        check_connect(received(packet), Limits(**limits))  # type: ignore[arg-type]
    except MQTTError as err:
        return err.reason_code
    return None


def test_acceptable_connects_pass() -> None:
    assert refusal(Connect("c")) is None
    assert refusal(Connect("", clean_start=True)) is None  # v5 empty id: one is assigned
    assert refusal(Connect("", MQTT311, clean_start=True)) is None
    assert refusal(Connect("c", will=Will("w", b"x", qos=2, retain=True))) is None


def test_v311_empty_client_id_needs_clean_session() -> None:
    # [MQTT-3.1.3-8]: identifier rejected (return code 2)
    assert (
        refusal(Connect("", MQTT311, clean_start=False)) == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    )


def test_will_beyond_what_the_broker_carries() -> None:
    assert (
        refusal(Connect("c", will=Will("w", qos=2)), maximum_qos=1) == ReasonCode.QOS_NOT_SUPPORTED
    )
    assert (
        refusal(Connect("c", will=Will("w", retain=True)), retain_available=False)
        == ReasonCode.RETAIN_NOT_SUPPORTED
    )


@pytest.mark.parametrize(("keep_alive", "refused"), [(30, False), (120, True), (0, True)])
def test_v311_keep_alive_over_the_maximum(keep_alive: int, refused: bool) -> None:
    packet = Connect("c", MQTT311, keep_alive=keep_alive)
    code = refusal(packet, max_keep_alive=60)
    assert code == (ReasonCode.CLIENT_IDENTIFIER_NOT_VALID if refused else None)
    # "accept" lets it in with its own keep alive
    assert refusal(packet, max_keep_alive=60, v311_keep_alive="accept") is None
    # v5 is told the maximum instead of being refused
    assert refusal(Connect("c", MQTT5, keep_alive=keep_alive), max_keep_alive=60) is None


def _terms(packet: Connect, **kw: object) -> object:
    settings: dict[str, object] = {
        "max_session_expiry_interval": 0xFFFFFFFF,
        "server_keep_alive": None,
        "max_keep_alive": 65535,
    }
    settings.update(kw)
    return negotiate(
        packet.protocol_version,
        packet.clean_start,
        packet.properties.session_expiry_interval,
        packet.keep_alive,
        **settings,  # type: ignore[arg-type]
    )


def test_plain_connect_shares_the_cached_connack() -> None:
    packet = received(Connect("c", properties=Properties(session_expiry_interval=60)))
    terms = _terms(packet)
    made: list[int] = []

    def base() -> Properties:
        made.append(1)
        return Properties()

    assert connack_properties(packet, terms, "c", base, "resp/", None, None) is None  # type: ignore[arg-type]
    assert made == []


def test_connack_states_what_differs_from_the_request() -> None:
    packet = received(
        Connect(
            "",
            keep_alive=600,
            properties=Properties(session_expiry_interval=7200, request_response_information=1),
        )
    )
    terms = _terms(packet, max_session_expiry_interval=3600, max_keep_alive=60)
    props = connack_properties(packet, terms, "auto-1", Properties, "resp/", "SCRAM", b"srv")  # type: ignore[arg-type]
    assert props is not None
    assert props.session_expiry_interval == 3600  # capped [MQTT-3.2.2.3.2]
    assert props.assigned_client_identifier == "auto-1"  # [MQTT-3.2.2-16]
    assert props.server_keep_alive == 60
    assert props.response_information == "resp/auto-1"
    assert props.authentication_method == "SCRAM" and props.authentication_data == b"srv"


def test_client_id_assigned_only_for_an_empty_one() -> None:
    packet = received(Connect("mine", keep_alive=600))
    terms = _terms(packet, max_keep_alive=60)
    props = connack_properties(packet, terms, "mine", Properties, "", None, None)  # type: ignore[arg-type]
    assert props is not None and props.assigned_client_identifier is None


def test_server_properties_state_the_configured_limits() -> None:
    default = server_properties(Config(receive_maximum=65535))
    assert default.receive_maximum is None  # 65535: the protocol default, not stated
    assert default.maximum_qos is None and default.retain_available is None
    assert default.wildcard_subscription_available == 1
    cfg = Config(receive_maximum=10, maximum_qos=1, retain_available=False, topic_alias_maximum=5)
    props = server_properties(cfg)
    assert props.receive_maximum == 10 and props.maximum_qos == 1
    assert props.retain_available == 0 and props.topic_alias_maximum == 5
    assert props.maximum_packet_size == cfg.max_packet_size
