"""The extra listeners: TCP, TLS, WebSocket and WebSocket over TLS, each
optionally behind the PROXY protocol.

Each listener's protocol factory builds the layer stack (see
:mod:`shardmq.worker.layer`) around a fresh ``Connection``::

    tcp  (proxy_protocol)   ProxyLayer -> Connection
    tls                     [ProxyLayer ->] TlsLayer -> Connection
    ws                      [ProxyLayer ->] WebSocketLayer -> Connection
    wss                     [ProxyLayer ->] TlsLayer -> WebSocketLayer -> Connection

A plain ``tcp`` listener without the PROXY protocol gets the bare
``Connection``, exactly like the main host:port listener: no layer, no cost.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Mapping

from ..config import Config, Listener, effective_listeners, listener_setting
from ..errors import ConfigError
from .connection import Connection, ListenerLoad
from .proxy import ProxyLayer
from .tls import ServerContext, TlsLayer
from .websocket import WebSocketLayer

log = logging.getLogger("shardmq.listener")

#: room for a few small packets beside a maximum-size one in a WebSocket frame
_FRAME_SLACK = 64 * 1024


def tls_contexts(config: Config) -> dict[int, ServerContext]:
    """The TLS context of every tls/wss listener, by listener index.

    Loads the certificates now, so a bad file is a ``ConfigError`` at start.
    """
    contexts: dict[int, ServerContext] = {}
    for index, (label, listener) in enumerate(effective_listeners(config)):
        if listener.type in ("tls", "wss"):
            assert listener.certfile is not None  # checked by Config
            contexts[index] = ServerContext(
                listener.certfile,
                listener.keyfile,
                listener.cafile,
                bool(listener.require_client_cert),
                listener.ciphers,
                # "listeners[1]." or "" (the shortcuts use the top-level files)
                listener_setting(label, "x")[:-1],
            )
    return contexts


def protocol_factory_for(
    listener: Listener,
    config: Config,
    make_connection: Callable[[], asyncio.Protocol],
    context: ServerContext | None,
) -> Callable[[], asyncio.Protocol]:
    """The factory the event loop calls for each connection accepted on ``listener``."""
    timeout = config.connect_timeout
    kind = listener.type
    proxy = listener.proxy_protocol
    if listener.max_connections or config.metrics_port is not None:
        # counted per listener for its limit, or for the metrics (per
        # connection, never per message); without a limit it never refuses
        load = ListenerLoad(
            listener.max_connections or sys.maxsize, f"{listener.type}:{listener.port}"
        )
        counted = make_connection

        def make_connection() -> asyncio.Protocol:
            protocol = counted()
            if isinstance(protocol, Connection):
                protocol.load = load
            return protocol

    if kind == "tcp" and not proxy:
        return make_connection
    path = listener.path
    origins = listener.allowed_origins
    max_frame = config.max_packet_size + _FRAME_SLACK

    def make() -> asyncio.Protocol:
        protocol = make_connection()
        if kind in ("ws", "wss"):
            protocol = WebSocketLayer(protocol, timeout, path, origins, max_frame)
        if context is not None:
            protocol = TlsLayer(protocol, context, timeout)
        if proxy:
            protocol = ProxyLayer(protocol, timeout)
        return protocol

    return make


async def start_listeners(
    loop: asyncio.AbstractEventLoop,
    config: Config,
    protocol_factory: Callable[[], asyncio.Protocol],
    sockets: Mapping[int, socket.socket] | None = None,
    *,
    contexts: dict[int, ServerContext] | None = None,
) -> list[asyncio.AbstractServer]:
    """Start a server for every extra listener of ``config``, in
    ``effective_listeners`` order; ``protocol_factory()`` makes a ``Connection``.

    With ``sockets`` (listener index -> listening socket, bound by the
    supervisor), serve on those instead of binding. ``contexts`` (from
    :func:`tls_contexts`) are used when given, so the caller can reload them;
    otherwise they are built here. On any failure the servers already started
    are closed and a ``ConfigError`` names the listener.
    """
    if contexts is None:
        contexts = tls_contexts(config)
    servers: list[asyncio.AbstractServer] = []
    try:
        for index, (label, listener) in enumerate(effective_listeners(config)):
            factory = protocol_factory_for(listener, config, protocol_factory, contexts.get(index))
            sock = sockets.get(index) if sockets is not None else None
            server: asyncio.AbstractServer
            if sock is not None:
                server = await loop.create_server(factory, sock=sock, backlog=4096)
            else:
                try:
                    server = await loop.create_server(
                        factory, listener.host, listener.port, backlog=4096, reuse_address=True
                    )
                except OSError as exc:
                    name = label if not label.startswith("listeners[") else f"{label}.port"
                    raise ConfigError(
                        name,
                        f"cannot listen on {listener.host}:{listener.port}: {exc.strerror or exc}",
                    ) from None
            servers.append(server)
            address = server.sockets[0].getsockname() if server.sockets else ("?", 0)
            log.info(
                "listening for MQTT over %s on %s:%d%s%s",
                listener.type.upper(),
                address[0],
                address[1],
                listener.path if listener.type in ("ws", "wss") else "",
                " (PROXY protocol)" if listener.proxy_protocol else "",
            )
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
