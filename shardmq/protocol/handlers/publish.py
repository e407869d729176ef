"""An inbound PUBLISH: what makes it a protocol error, and whether it is new.

Resolves the topic alias (and learns a new one), refuses what the broker did
not grant (QoS above Maximum QoS, RETAIN when retain is not available, a
Subscription Identifier from a client) and tells a QoS 2 resend of a message
already routed from a new one, counting the receive window.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Protocol

from ...errors import ProtocolViolation
from ..constants import MQTT5, ReasonCode
from ..packets import Publish

#: what check_publish decides
ROUTE = "route"
#: a QoS 2 resend of a message routed already: PUBREC again, do not route
DUPLICATE = "duplicate"


class Limits(Protocol):
    """What the broker granted in CONNACK (the broker's Config has them)."""

    @property
    def topic_alias_maximum(self) -> int: ...

    @property
    def maximum_qos(self) -> int: ...

    @property
    def retain_available(self) -> bool: ...

    @property
    def receive_maximum(self) -> int: ...


def check_publish(
    packet: Publish,
    version: int,
    aliases: dict[int, str],
    inbound_qos2: AbstractSet[int],
    limits: Limits,
) -> str:
    """ROUTE or DUPLICATE; the packet's topic alias is resolved in place (and
    removed from its properties); ``aliases`` learns a new mapping."""
    props = packet._properties  # None: the PUBLISH had no properties
    if version == MQTT5 and props is not None:
        alias = props.topic_alias
        if alias is not None:
            if alias == 0 or alias > limits.topic_alias_maximum:
                # [MQTT-3.3.2-9], [MQTT-3.3.2-10]
                raise ProtocolViolation(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias invalid")
            if packet.topic:
                aliases[alias] = packet.topic
            else:
                topic = aliases.get(alias)
                if topic is None:
                    raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "unknown topic alias")
                packet.topic = topic
            props.topic_alias = None
        if props.subscription_identifiers is not None:
            # [MQTT-3.3.4-6]
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "subscription identifier in PUBLISH")
    qos = packet.qos
    if qos > limits.maximum_qos:
        raise ProtocolViolation(ReasonCode.QOS_NOT_SUPPORTED, "QoS not supported")
    if packet.retain and not limits.retain_available:
        raise ProtocolViolation(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not supported")
    if qos == 2:
        if packet.packet_id in inbound_qos2:
            return DUPLICATE
        if len(inbound_qos2) >= limits.receive_maximum:
            # [MQTT-3.3.4-7]: more unacknowledged QoS 2 than we allowed
            raise ProtocolViolation(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
    return ROUTE
