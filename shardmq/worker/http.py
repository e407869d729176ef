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
import hmac
import json
import logging
import socket
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote

from ..errors import MQTTError
from ..protocol.topics import validate_topic_name
from . import admin
from .metrics import LatencyProbe, gather, render_prometheus, stats_json
from .status_page import STATUS_PAGE

if TYPE_CHECKING:
    from .shard import Shard

log = logging.getLogger("shardmq.http")

#: a request line and headers larger than this are refused (431)
MAX_HEAD = 16 * 1024
#: a request body larger than this is refused (413)
MAX_BODY = 1024 * 1024
METHODS = frozenset({"GET", "HEAD", "POST", "DELETE"})
ADMIN_PREFIXES = (
    "/api/v1/clients",
    "/api/v1/subscriptions",
    "/api/v1/publish",
    "/api/v1/retained",
)
READ_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: DEFAULT_LIMIT rows a page unless ?limit= says otherwise (up to MAX_LIMIT)
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000

#: status, content type, body
Answer = tuple[int, str, bytes]


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


def _json(status: int, value: Any) -> Answer:
    return status, "application/json", json.dumps(value).encode() + b"\n"


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed and not (method == "HEAD" and "GET" in allowed):
        raise admin.AdminError(405, f"method {method} not allowed here")


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("0", "false", "no", "off", ""):
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    raise admin.AdminError(400, f"{name}: expected true or false, got {value!r}")


def _number(req: Request, name: str, default: int, high: int) -> int:
    text = req.arg(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= high:
        raise admin.AdminError(400, f"{name}: expected a number from 1 to {high}, got {text!r}")
    return value


def _page(req: Request, rows: list[Any], asked: admin.Answers | None = None) -> dict[str, Any]:
    """One page of ``rows`` (?page=, from 1, and ?limit=), EMQX's layout."""
    page = _number(req, "page", 1, 1 << 31)
    limit = _number(req, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    start = (page - 1) * limit
    meta = {"page": page, "limit": limit, "count": len(rows), "hasnext": start + limit < len(rows)}
    out: dict[str, Any] = {"data": rows[start : start + limit], "meta": meta}
    if asked is not None and asked.missing_workers:
        out["missing_workers"] = asked.missing_workers
    if asked is not None and asked.missing_nodes:
        out["missing_nodes"] = asked.missing_nodes
    return out


def _pick_session(found: list[Any]) -> Any:
    """The session of a client id that more than one process answered for:
    the connected one (a takeover across nodes may leave the old owner's
    offline copy until its store write lands), else the first."""
    sessions = [f for f in found if f is not None]
    for session in sessions:
        if session["connected"]:
            return session
    return sessions[0] if sessions else None


def _not_found(what: str, name: str, asked: admin.Answers) -> Answer:
    silent = [f"worker {w}" for w in asked.missing_workers]
    silent += [f"node {n}" for n in asked.missing_nodes]
    if silent:
        text = f"no {what} {name!r} found; {', '.join(silent)} did not answer"
        return _json(503, {"error": text})
    return _json(404, {"error": f"no {what} {name!r}"})


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
        head_only = False
        try:
            request = await asyncio.wait_for(self._read(reader), READ_TIMEOUT)
            if isinstance(request, Request):
                head_only = request.method == "HEAD"
                status, ctype, body = await self.route(request)
            else:
                status, ctype, body = request
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("http: request failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        extra = 'WWW-Authenticate: Bearer realm="shardmq"\r\n' if status == 401 else ""
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode("latin-1") + (b"" if head_only else body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Request | Answer:
        """The request, or the answer to one that cannot be served."""
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
        if method not in METHODS:
            return 405, "text/plain", b"method not allowed\n"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body = b""
        if method in ("POST", "DELETE") and "transfer-encoding" in headers:
            return 411, "text/plain", b"send a Content-Length\n"
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                return 400, "text/plain", b"bad Content-Length\n"
            if length < 0:
                return 400, "text/plain", b"bad Content-Length\n"
            if length > MAX_BODY:
                return 413, "text/plain", b"request body too large\n"
            body = await reader.readexactly(length)
        path, _, query = target.partition("?")
        return Request(method, path, parse_qs(query), headers, body)

    async def route(self, request: Request) -> Answer:
        path = request.path
        if path.startswith(ADMIN_PREFIXES):
            return await self._admin(request)
        if request.method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
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

    # -- the admin API (admin_token) -------------------------------------------------

    async def _admin(self, request: Request) -> Answer:
        token = self.shard.config.admin_token
        if token is None:
            return _json(404, {"error": "the admin API is off: set admin_token"})
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            log.warning("admin API: request without the right token refused")
            return _json(401, {"error": "missing or wrong token (Authorization: Bearer ...)"})
        try:
            return await self._admin_route(request)
        except admin.AdminError as exc:
            return _json(exc.status, {"error": str(exc)})

    async def _admin_route(self, req: Request) -> Answer:
        shard = self.shard
        method, path = req.method, req.path
        if path == "/api/v1/clients":
            _allow(method, "GET")
            args = {"prefix": req.arg("prefix"), "username": req.arg("username")}
            asked = await admin.ask_all(shard, "clients", args)
            rows = sorted(
                (row for rows in asked.answers if rows for row in rows),
                key=lambda r: r["client_id"],
            )
            return _json(200, _page(req, rows, asked))
        if path.startswith("/api/v1/clients/"):
            client_id = unquote(path[len("/api/v1/clients/") :])
            if method in ("GET", "HEAD"):
                asked = await admin.ask_all(shard, "client", {"id": client_id})
                found = _pick_session(asked.answers)
                if found is not None:
                    return _json(200, found)
                return _not_found("client", client_id, asked)
            _allow(method, "DELETE")
            discard = _flag(req.arg("discard"), "discard")
            asked = await admin.ask_all(shard, "kick", {"id": client_id, "discard": discard})
            done = [result for result in asked.answers if result is not None]
            if done:
                result = "discarded" if "discarded" in done else done[0]
                return _json(200, {"client_id": client_id, "result": result})
            return _not_found("connected client", client_id, asked)
        if path == "/api/v1/subscriptions":
            _allow(method, "GET")
            topic = req.arg("topic")
            if topic is None:
                raise admin.AdminError(400, "topic: give ?topic=...")
            try:
                validate_topic_name(topic)
            except MQTTError as exc:
                raise admin.AdminError(400, f"topic: {exc}") from None
            asked = await admin.ask_all(shard, "subscriptions", {"topic": topic})
            rows = sorted(
                (row for rows in asked.answers if rows for row in rows),
                key=lambda r: (r["client_id"], r["topic_filter"]),
            )
            return _json(200, _page(req, rows, asked))
        if path == "/api/v1/publish":
            _allow(method, "POST")
            try:
                body = json.loads(req.body or b"null")
            except (ValueError, UnicodeDecodeError) as exc:
                raise admin.AdminError(400, f"body: not JSON: {exc}") from None
            matched = admin.publish(shard, body)
            return _json(200, {"published": True, "matched_here": matched})
        if path == "/api/v1/retained":
            _allow(method, "GET")
            rows = admin.retained_list(shard, req.arg("filter") or "#")
            return _json(200, _page(req, rows))
        if path.startswith("/api/v1/retained/"):
            topic = unquote(path[len("/api/v1/retained/") :])
            if method in ("GET", "HEAD"):
                found = admin.retained_get(shard, topic)
                if found is None:
                    return _json(404, {"error": f"no retained message on {topic!r}"})
                return _json(200, found)
            _allow(method, "DELETE")
            if not admin.retained_delete(shard, topic):
                return _json(404, {"error": f"no retained message on {topic!r}"})
            return _json(200, {"topic": topic, "deleted": True})
        return _json(404, {"error": f"no admin route {path}"})

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
