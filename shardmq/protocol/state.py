"""The states of one client connection, in the order they are passed.

``AWAIT_CONNECT`` until the CONNECT arrives (only CONNECT may be decoded
[MQTT-3.1.0-1]); ``CONNECTING`` while its hooks, the client-id claim or the
enhanced authentication exchange run (later packets wait, none is processed
before CONNACK [MQTT-3.1.4-5]; only AUTH and DISCONNECT are part of the
exchange); ``CONNECTED`` once CONNACK is sent; ``CLOSED`` for good.
"""

from __future__ import annotations

from enum import IntEnum


class ConnectionState(IntEnum):
    AWAIT_CONNECT = 0
    CONNECTING = 1
    CONNECTED = 2
    CLOSED = 3
