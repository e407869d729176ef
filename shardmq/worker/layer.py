"""A transport layer: a protocol to the transport below, a transport to the one above.

Theory of operation
-------------------
The PROXY header, TLS and WebSocket each sit between the event loop's socket
transport and a :class:`~shardmq.worker.connection.Connection`, which knows
nothing about them. A listener stacks them as needed::

    loop transport -> ProxyLayer -> TlsLayer -> WebSocketLayer -> Connection

Each layer is the ``asyncio.Protocol`` of the layer below and the transport of
the layer above. A layer first runs its own opening (read the PROXY header,
the TLS handshake, the HTTP upgrade) under a deadline; only when that succeeds
does it call the upper protocol's ``connection_made`` with itself, so a
refused connection never reaches the shard: it gets a log line and a close,
and no other connection notices. After the opening, bytes go through the
layer's ``data_received``/``write`` and everything else (flow control, close,
buffer sizes, extra info) is delegated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("shardmq.listener")


class Layer(asyncio.Protocol, asyncio.Transport):
    """Delegates everything; subclasses override the opening and the byte path."""

    #: names answered by this layer in ``get_extra_info``
    extra: dict[str, Any]

    def __init__(self, upper: asyncio.Protocol, timeout: float) -> None:
        self.upper = upper
        self.lower: asyncio.Transport | None = None
        self.extra = {}
        self.opened = False
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    # -- protocol side (the layer below calls these) ---------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.lower = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._opening_timed_out)

    def data_received(self, data: bytes) -> None:
        self.upper.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; MQTT has no half-closed state

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.opened:
            self.upper.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.opened:
            self.upper.pause_writing()

    def resume_writing(self) -> None:
        if self.opened:
            self.upper.resume_writing()

    # -- the opening -------------------------------------------------------------------

    def open_upper(self) -> None:
        """The opening succeeded: hand this layer to the upper protocol as its transport."""
        self._cancel_timer()
        self.opened = True
        self.upper.connection_made(self)

    def refuse(self, reason: object) -> None:
        """End a connection whose opening failed, with one log line."""
        self._cancel_timer()
        log.info("%s from %s refused: %s", self.kind, self.peer_text(), reason)
        if self.lower is not None:
            self.lower.close()

    def peer_text(self) -> str:
        peer = self.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return "?"

    def _opening_timed_out(self) -> None:
        self._timer = None
        if not self.opened and self.lower is not None and not self.lower.is_closing():
            log.info("%s from %s: opening not done in time, closing", self.kind, self.peer_text())
            self.lower.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    #: what the layer is called in log lines
    kind = "connection"

    # -- transport side (the upper protocol calls these) ---------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.lower is not None
        self.lower.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self.lower is not None:
            self.lower.close()

    def abort(self) -> None:
        if self.lower is not None:
            self.lower.abort()

    def is_closing(self) -> bool:
        return self.lower is None or self.lower.is_closing()

    def pause_reading(self) -> None:
        if self.lower is not None:
            self.lower.pause_reading()

    def resume_reading(self) -> None:
        if self.lower is not None:
            self.lower.resume_reading()

    def is_reading(self) -> bool:
        return self.lower is not None and self.lower.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.lower.get_write_buffer_size() if self.lower is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        assert self.lower is not None
        return self.lower.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.lower is not None:
            self.lower.set_write_buffer_limits(high=high, low=low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self.extra:
            return self.extra[name]
        if self.lower is None:
            return default
        return self.lower.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.upper

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.upper = protocol  # type: ignore[assignment]
