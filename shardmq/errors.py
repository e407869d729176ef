"""Typed errors. Each carries the MQTT 5.0 reason code that answers it.

Protocol errors (raised by the codec and the session) end the connection: the
worker maps them to a CONNACK before CONNECT completes, to a DISCONNECT after
(v5), or to a plain close (3.1.1). Hook errors are raised by user hooks to
refuse one packet; the worker answers with the matching acknowledgement.
"""

from __future__ import annotations

from .protocol.constants import ReasonCode


class ShardMQError(Exception):
    """Base of every shardmq error."""


class ConfigError(ShardMQError):
    """A setting has a wrong value. ``str()`` is one line naming the setting."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class MQTTError(ShardMQError):
    """An error with an MQTT reason code and an optional reason string."""

    default_code: int = ReasonCode.UNSPECIFIED_ERROR

    def __init__(self, reason_code: int | None = None, reason_string: str | None = None) -> None:
        code = self.default_code if reason_code is None else int(reason_code)
        self.reason_code = code
        self.reason_string = reason_string
        name = ReasonCode(code).name if code in ReasonCode._value2member_map_ else hex(code)
        super().__init__(f"{name}: {reason_string}" if reason_string else name)


# -- errors that end a connection ------------------------------------------


class ProtocolViolation(MQTTError):
    """The peer broke the protocol; the connection must be closed."""

    default_code = ReasonCode.PROTOCOL_ERROR


class MalformedPacket(ProtocolViolation):
    default_code = ReasonCode.MALFORMED_PACKET


class PacketTooLarge(ProtocolViolation):
    default_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(ProtocolViolation):
    """CONNECT named a protocol level we do not speak."""

    default_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


# -- errors a hook raises to refuse one packet ------------------------------


class HookError(MQTTError):
    """Base of the errors a hook raises to refuse what it was asked about."""

    default_code = ReasonCode.NOT_AUTHORIZED


class ConnectError(HookError):
    """Refuse a CONNECT: the client gets CONNACK with this reason code."""


class AuthError(HookError):
    """Refuse an AUTH exchange step: CONNACK (or DISCONNECT when re-authenticating)."""

    default_code = ReasonCode.NOT_AUTHORIZED


class PublishError(HookError):
    """Refuse a PUBLISH: PUBACK/PUBREC with this code (QoS 0: dropped silently)."""


class PubrelError(HookError):
    """Refuse a PUBREL: PUBCOMP with this code."""

    default_code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


class SubscribeError(HookError):
    """Refuse a subscription: its SUBACK entry gets this code."""


class UnsubscribeError(HookError):
    """Refuse an unsubscription: its UNSUBACK entry gets this code."""


class DisconnectError(HookError):
    """Raised by any hook to end the client's connection with this code."""

    default_code = ReasonCode.ADMINISTRATIVE_ACTION
