"""The states of one client connection, in the order they are passed.

``AWAIT_CONNECT`` until the CONNECT arrives (only CONNECT may be decoded
[MQTT-3.1.0-1]); ``CONNECTING`` while its hooks, the client-id claim or the
enhanced authentication exchange run (later packets wait, none is processed
before CONNACK [MQTT-3.1.4-5]; only AUTH and DISCONNECT are part of the
exchange); ``CONNECTED`` once CONNACK is sent; ``CLOSED`` for good.
``closing_packet`` is the one mapping from an error to what the client is
told before the connection closes, in each state.
"""

from __future__ import annotations

from enum import IntEnum

from ..errors import MQTTError, UnsupportedProtocolVersion
from .codec import sendable_code
from .constants import MQTT5, MQTT311, PacketType
from .packets import Connack, Disconnect, Properties


class ConnectionState(IntEnum):
    AWAIT_CONNECT = 0
    CONNECTING = 1
    CONNECTED = 2
    CLOSED = 3


def closing_packet(
    err: MQTTError, state: ConnectionState, version: int, problem_info: bool
) -> tuple[Connack | Disconnect, int] | None:
    """What to send before closing a connection because of ``err``, and in
    which protocol version to encode it; None: close without a word.

    Before CONNACK the answer is a CONNACK refusing the connection (an
    unsupported protocol level in the 3.1.1 format [MQTT-3.1.2-2]; a
    malformed 3.1.1 CONNECT gets none [MQTT-3.1.4-1]); after it, v5 gets a
    DISCONNECT with the reason code and 3.1.1 a plain close. The reason
    string is left out when the client asked for no problem information.
    """
    code = err.reason_code
    reason = err.reason_string if problem_info and version == MQTT5 else None
    props = Properties(reason_string=reason) if reason else None
    if state in (ConnectionState.AWAIT_CONNECT, ConnectionState.CONNECTING):
        if isinstance(err, UnsupportedProtocolVersion):
            return Connack(False, code), MQTT311
        if version == MQTT311 and state == ConnectionState.AWAIT_CONNECT:
            return None
        if version in (MQTT311, MQTT5):
            return Connack(False, sendable_code(PacketType.CONNACK, code), props), version
        return None
    if version == MQTT5:
        return Disconnect(sendable_code(PacketType.DISCONNECT, code), props), MQTT5
    return None
