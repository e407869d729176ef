"""Clients for the transport tests: paho over TLS/WebSocket, raw TLS and WS sockets."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import Connect
from tests.helpers import WAIT, BrokerThread, Client


def listener_port(bt: BrokerThread, index: int = 0) -> int:
    """The port of extra listener ``index`` (they are started on port 0)."""
    return int(bt.broker.listener_servers[index].sockets[0].getsockname()[1])


def paho_client(
    port: int,
    *,
    transport: str = "tcp",
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    path: str = "/mqtt",
    **kwargs: Any,
) -> Client:
    """A tests.helpers.Client over TLS and/or WebSocket."""
    client = Client(port, **kwargs)
    client.paho.transport = transport  # type: ignore[assignment]
    if transport == "websockets":
        client.paho.ws_set_options(path=path)
    if cafile is not None:
        client.paho.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile)
    return client


def tls_socket(
    port: int,
    cafile: str,
    certfile: str | None = None,
    keyfile: str | None = None,
    sock: socket.socket | None = None,
) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cafile)
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def read_all(sock: socket.socket) -> bytes:
    """Everything the broker sends until it closes the connection."""
    sock.settimeout(WAIT)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def mqtt_connect(sock: socket.socket, client_id: str = "raw", version: int = 5) -> Any:
    """Send CONNECT on ``sock`` and return the broker's first packet (or None)."""
    sock.sendall(encode(Connect(client_id, protocol_version=version), version))
    return read_packet(sock, version)


def read_packet(sock: socket.socket, version: int = 5) -> Any:
    decoder = Decoder(server=False, version=version)
    sock.settimeout(WAIT)
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return None
        if not data:
            return None
        packets = decoder.feed(data)
        if packets:
            return packets[0]
