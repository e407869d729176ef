"""MQTT over WebSocket (MQTT 5.0 section 6): the WebSocket layer.

The sans-I/O core of ``websockets`` (:class:`websockets.server.ServerProtocol`)
does the HTTP upgrade, the frame parsing with its C unmasking, control frames
(ping, pong, close) and the limits; this module only drives it:
``receive_data`` -> ``events_received`` -> ``data_to_send``.

MQTT sees a byte stream. The payload of every binary frame (continuations
included) goes straight to the connection's decoder, so a packet may span
frames and a frame may carry several packets, as section 6 allows.

Outbound, the connection's flush already batches its packets; we put one
frame header in front and write the payload as it is, without asking the core
to serialize it (which would copy it once more). Server frames are never
masked, so the header is all there is to build. The core still writes the
control frames; both go to the transport in the order they are made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from .layer import Layer

log = logging.getLogger("shardmq.listener")

#: The core logs each open and rejection at INFO; we log our own lines instead.
_core_log = logging.getLogger("shardmq.websocket")
_core_log.setLevel(logging.WARNING)

#: [MQTT-6.0.0-3]/[MQTT-6.0.0-4]: the client offers "mqtt" and the server
#: selects it; "mqttv3.1" is what some 3.1-era clients still send.
SUBPROTOCOLS = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))

#: what a request that is not HTTP at all gets (the core only closes)
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

#: payloads up to this size are joined with their header into one write
_JOIN_LIMIT = 16 * 1024


def frame_header(length: int) -> bytes:
    """The header of an unmasked, final binary frame of ``length`` bytes (RFC 6455 5.2)."""
    if length < 126:
        return bytes((0x82, length))
    if length < 0x10000:
        return b"\x82\x7e" + length.to_bytes(2, "big")
    return b"\x82\x7f" + length.to_bytes(8, "big")


def _http_method_verdict(head: bytes) -> bool | None:
    """Whether ``head`` starts like an HTTP request line (None: not known yet).

    Lets raw MQTT (or TLS) sent to a WebSocket port be refused at once instead
    of waiting for a line end that never comes.
    """
    method, space, _ = head.partition(b" ")
    if method and not (method.isalpha() and method.isupper()):
        return False
    if space:
        return bool(method)
    return None if len(head) < 8 else False


class WebSocketLayer(Layer):
    """Serves MQTT over WebSocket on ``path``."""

    kind = "WebSocket connection"

    def __init__(
        self,
        upper: asyncio.Protocol,
        timeout: float,
        path: str,
        allowed_origins: Sequence[str],
        max_frame_size: int,
    ) -> None:
        super().__init__(upper, timeout)
        self._path = path
        #: the first bytes, until they are known to start an HTTP request line
        self._head = b""
        self._checked_method = False
        origins: list[Origin | None] | None = None
        if allowed_origins:
            # Browsers always send Origin; a request without one comes from a
            # non-browser client, which the origin check does not protect against.
            origins = [Origin(o) for o in allowed_origins]
            origins.append(None)
        self._ws = ServerProtocol(
            origins=origins,
            subprotocols=list(SUBPROTOCOLS),
            # a frame is bounded, a fragmented message is not: MQTT is a stream
            max_size=(None, max_frame_size),
            logger=_core_log,
        )

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        if self.lower is None or self.lower.is_closing():
            return
        if not self.opened and not self._checked_method:
            self._head += data[:8]
            verdict = _http_method_verdict(self._head)
            if verdict is False:
                self.lower.write(_BAD_REQUEST)
                self.refuse("HTTP 400: not an HTTP request")
                return
            self._checked_method = verdict is True
        ws.receive_data(data)
        events = ws.events_received()
        start = 0
        if not self.opened:
            if not events:
                if ws.handshake_exc is not None:
                    self.lower.write(_BAD_REQUEST)
                    self.refuse(f"HTTP 400: {ws.handshake_exc}")
                return
            request = events[0]
            assert isinstance(request, Request)
            if not self._upgrade(request):
                return
            start = 1
        payloads: list[bytes] = []
        for event in events[start:]:
            opcode = getattr(event, "opcode", None)
            if opcode is Opcode.BINARY or opcode is Opcode.CONT:
                payloads.append(bytes(event.data))  # type: ignore[union-attr]
            elif opcode is Opcode.TEXT:
                # [MQTT-6.0.0-1] MQTT is carried in binary frames only
                log.info("WebSocket connection from %s: text frame, closing", self.peer_text())
                ws.fail(1003, "MQTT uses binary frames")
                break
        if payloads:
            self.upper.data_received(payloads[0] if len(payloads) == 1 else b"".join(payloads))
        self._send_pending()

    def _upgrade(self, request: Request) -> bool:
        ws = self._ws
        path = request.path.partition("?")[0]
        if path != self._path:
            response = ws.reject(404, f"No MQTT endpoint at {path}; try {self._path}.\n")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        self._send_pending()
        if response.status_code != 101:
            reason = ws.handshake_exc or f"path {path!r}"
            self.refuse(f"HTTP {response.status_code}: {reason}")
            return False
        self.extra["websocket_path"] = request.path
        self.extra["websocket_subprotocol"] = ws.subprotocol
        self.open_upper()
        return not self.is_closing()

    def _send_pending(self) -> None:
        lower = self.lower
        if lower is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                lower.write(chunk)
            else:  # the core is done: close after what is queued
                lower.close()
                return

    # -- transport side -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        lower = self.lower
        if lower is None or self._ws.close_sent is not None:
            return
        n = len(data)
        if n <= _JOIN_LIMIT:
            lower.write(frame_header(n) + data)
        else:
            lower.write(frame_header(n))
            lower.write(data)

    def close(self) -> None:
        ws = self._ws
        if self.opened and ws.close_sent is None and ws.state is State.OPEN:
            ws.send_close(1000)
            self._send_pending()
        super().close()
