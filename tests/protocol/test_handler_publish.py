"""The inbound PUBLISH handler (protocol/handlers/publish.py), without sockets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shardmq.errors import ProtocolViolation
from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.handlers.publish import DUPLICATE, ROUTE, check_publish
from shardmq.protocol.packets import Properties, Publish


@dataclass(frozen=True)
class Limits:
    topic_alias_maximum: int = 10
    maximum_qos: int = 2
    retain_available: bool = True
    receive_maximum: int = 2


def publish(topic: str = "a/b", qos: int = 1, pid: int | None = 1, **props: object) -> Publish:
    return Publish(
        topic, b"x", qos=qos, packet_id=pid if qos else None, properties=Properties(**props)
    )  # type: ignore[arg-type]


def refused(packet: Publish, code: ReasonCode, version: int = MQTT5, **limits: object) -> None:
    with pytest.raises(ProtocolViolation) as info:
        check_publish(packet, version, {}, set(), Limits(**limits))  # type: ignore[arg-type]
    assert info.value.reason_code == code


def test_topic_alias_is_learned_then_resolved() -> None:
    aliases: dict[int, str] = {}
    first = publish("sensors/1", topic_alias=3)
    assert check_publish(first, MQTT5, aliases, set(), Limits()) == ROUTE
    assert aliases == {3: "sensors/1"} and first.properties.topic_alias is None
    again = publish("", topic_alias=3)
    assert check_publish(again, MQTT5, aliases, set(), Limits()) == ROUTE
    assert again.topic == "sensors/1"  # forwarded without the alias


def test_bad_aliases_are_protocol_errors() -> None:
    refused(publish(topic_alias=0), ReasonCode.TOPIC_ALIAS_INVALID)  # [MQTT-3.3.2-9]
    refused(publish(topic_alias=11), ReasonCode.TOPIC_ALIAS_INVALID)  # [MQTT-3.3.2-10]
    refused(publish("", topic_alias=4), ReasonCode.PROTOCOL_ERROR)  # never set


def test_what_was_not_granted_is_refused() -> None:
    refused(publish(subscription_identifiers=[1]), ReasonCode.PROTOCOL_ERROR)  # [MQTT-3.3.4-6]
    refused(publish(qos=2, pid=5), ReasonCode.QOS_NOT_SUPPORTED, maximum_qos=1)
    retained = Publish("a", b"x", qos=0, retain=True)
    refused(retained, ReasonCode.RETAIN_NOT_SUPPORTED, retain_available=False)
    refused(retained, ReasonCode.RETAIN_NOT_SUPPORTED, MQTT311, retain_available=False)


def test_qos2_resend_is_a_duplicate_and_the_window_is_counted() -> None:
    inbound = {1}
    assert check_publish(publish(qos=2, pid=1), MQTT5, {}, inbound, Limits()) == DUPLICATE
    assert check_publish(publish(qos=2, pid=2), MQTT5, {}, inbound, Limits()) == ROUTE
    full = {1, 2}
    with pytest.raises(ProtocolViolation) as info:
        check_publish(publish(qos=2, pid=3), MQTT5, {}, full, Limits())
    assert info.value.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    # a QoS 1 message is not counted in the QoS 2 window
    assert check_publish(publish(qos=1, pid=3), MQTT5, {}, full, Limits()) == ROUTE
