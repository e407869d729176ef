"""AUTH from the client (sans-I/O): whether it continues the CONNECT's
exchange or re-authenticates a connected client (spec 4.12), refusing what
the specification calls a Protocol Error. The exchange itself is the
``on_auth`` hook's, run by the connection."""

from __future__ import annotations

from ...errors import ProtocolViolation
from ..constants import MQTT5, ReasonCode
from ..packets import Auth


def check_auth(packet: Auth, version: int, connected: bool, auth_method: str | None) -> bool:
    """True for a re-authentication (after CONNACK), False for the next round
    of the CONNECT's exchange."""
    if version != MQTT5:
        raise ProtocolViolation(ReasonCode.MALFORMED_PACKET)
    if auth_method is None or packet.properties.authentication_method != auth_method:
        # [MQTT-4.12.0-5] / [MQTT-4.12.1-1]
        raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "authentication method mismatch")
    code = packet.reason_code
    if not connected:
        if code != ReasonCode.CONTINUE_AUTHENTICATION:
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR)
        return False
    if code not in (ReasonCode.RE_AUTHENTICATE, ReasonCode.CONTINUE_AUTHENTICATION):
        raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR)
    return True
