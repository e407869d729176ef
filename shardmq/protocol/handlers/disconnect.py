"""DISCONNECT from the client (sans-I/O): a v5 DISCONNECT may change the
Session Expiry Interval, and its reason code decides the will."""

from __future__ import annotations

from ...errors import ProtocolViolation
from ..constants import MQTT5, ReasonCode
from ..packets import Disconnect
from ..session import Session


def on_disconnect(
    session: Session | None, packet: Disconnect, version: int, max_expiry: int
) -> bool:
    """True when the will is to be published (reason code 0x04)."""
    if version == MQTT5 and session is not None:
        new_expiry = packet.properties.session_expiry_interval
        if new_expiry is not None:
            if session.expiry_interval == 0 and new_expiry != 0:
                # [MQTT-3.14.2-2]
                raise ProtocolViolation(
                    ReasonCode.PROTOCOL_ERROR, "session expiry set on DISCONNECT"
                )
            session.expiry_interval = min(new_expiry, max_expiry)
    # 0x04 asks for the will; any other normal DISCONNECT discards it [MQTT-3.14.4-3]
    return packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
