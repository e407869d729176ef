"""The operating port: /metrics, /healthz, /readyz, /api/v1/stats and the status page.

Served once for the whole broker, by worker 0 (the single-process broker
serves it itself): the supervisor binds the socket before it forks, as it
does the MQTT listeners, so a restarted worker 0 gets the same one back. The
other workers' figures come over the fabric (``metrics.gather``). A small
HTTP/1.1 handler, one request per connection (``Connection: close``): this is
a port for Prometheus and probes, not a web server, and it never shares a
code path with MQTT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import TYPE_CHECKING

from .metrics import LatencyProbe, gather, render_prometheus, stats_json
from .status_page import STATUS_PAGE

if TYPE_CHECKING:
    from .shard import Shard

log = logging.getLogger("shardmq.http")

#: a request line and headers larger than this are refused (431)
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpsServer:
    """The operating HTTP port of one broker, in worker 0's loop."""

    def __init__(self, shard: Shard, probe: LatencyProbe) -> None:
        self.shard = shard
        self.probe = probe
        self.server: asyncio.Server | None = None

    async def start(self, sock: socket.socket | None, host: str, port: int) -> None:
        if sock is not None:
            self.server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    # -- one request per connection ------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._answer(reader), READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("http: request failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 431, "text/plain", b"request too large\n"
        if len(raw) > MAX_HEAD:
            return 431, "text/plain", b"request too large\n"
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request line\n"
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        return await self.route(path)

    async def route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            figures, _missing = await gather(self.shard, self.probe)
            return 200, PROMETHEUS_TYPE, render_prometheus(figures)
        if path == "/healthz":
            _figures, missing = await gather(self.shard, self.probe)
            if missing:
                text = "unresponsive workers: " + ", ".join(map(str, missing)) + "\n"
                return 503, "text/plain", text.encode()
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return self._ready()
        if path == "/api/v1/stats":
            figures, missing = await gather(self.shard, self.probe)
            cluster = self.shard.fabric.cluster_stats()
            nodes = cluster[0] if cluster is not None else None
            body = json.dumps(stats_json(figures, missing, nodes)).encode()
            return 200, "application/json", body
        if path == "/":
            return 200, "text/html; charset=utf-8", STATUS_PAGE
        return 404, "text/plain", b"not found\n"

    def _ready(self) -> tuple[int, str, bytes]:
        """Listeners bound (this server starts after them) and, with the Redis
        store, the store reachable; with several workers, every one linked."""
        shard = self.shard
        store = shard.store
        if store is not None and not getattr(store, "available", True):
            return 503, "text/plain", b"store unavailable\n"
        fabric = shard.fabric
        if fabric.distributed and hasattr(fabric, "ready") and not fabric.ready():
            return 503, "text/plain", b"workers not all linked\n"
        return 200, "text/plain", b"ready\n"
