"""A takeover storm over raw sockets: many CONNECTs with one client id, sent as
close together as one thread can, and what each connection then received."""

from __future__ import annotations

import selectors
import socket
import time
from typing import Any

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import Connack, Connect, Disconnect, Properties, Puback, Publish
from tests.helpers import WAIT, wait_for


class _Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.setblocking(False)
        self.decoder = Decoder(server=False, version=5)
        self.packets: list[Any] = []
        self.closed = False

    def read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        self.packets.extend(self.decoder.feed(data))


def storm(ports: list[int], cid: str, count: int, timeout: float = 30) -> list[_Conn]:
    """``count`` CONNECTs (Clean Start 0, session expiry 60) for ``cid``, spread
    over ``ports`` in turn; returns once at most one connection is open and
    every one has had its answer. Asserts that exactly one survived, holding
    the session, and that each other one was accepted and then taken over
    (DISCONNECT 0x8E) or refused."""
    conns = [_Conn(ports[n % len(ports)]) for n in range(count)]
    connect = encode(
        Connect(cid, clean_start=False, properties=Properties(session_expiry_interval=60)), 5
    )
    for c in conns:
        c.sock.send(connect)
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)

    def settled() -> bool:
        for key, _ in sel.select(timeout=0.05):
            conn = key.data
            conn.read()
            if conn.closed:
                sel.unregister(conn.sock)
        return sum(not c.closed for c in conns) <= 1 and all(c.packets or c.closed for c in conns)

    def states() -> list[Any]:
        return [(c.closed, [(type(p).__name__, p.reason_code) for p in c.packets]) for c in conns]

    try:
        wait_for(settled, timeout=timeout, interval=0)
    except AssertionError:
        raise AssertionError(f"not settled: {states()}") from None
    finally:
        sel.close()
    live = [c for c in conns if not c.closed]
    assert len(live) == 1, f"{len(live)} connections survived the storm: {states()}"
    (survivor,) = live
    acks = [p for p in survivor.packets if isinstance(p, Connack)]
    assert len(acks) == 1 and acks[0].reason_code == 0 and acks[0].session_present is True
    for c in conns:
        if c is not survivor:
            kinds = [(type(p).__name__, p.reason_code) for p in c.packets]
            assert kinds in ([("Connack", 0), ("Disconnect", 0x8E)], [("Connack", 0)]) or (
                len(kinds) == 1 and kinds[0][0] == "Connack" and kinds[0][1] >= 0x80
            ), kinds
    return conns


def survivor_of(conns: list[_Conn]) -> _Conn:
    return next(c for c in conns if not c.closed)


def received(conn: _Conn, seconds: float = 1.5) -> list[Any]:
    """What ``conn`` receives for ``seconds`` (QoS 1 PUBLISHes acknowledged);
    asserts no DISCONNECT came."""
    conn.sock.setblocking(True)
    got: list[Any] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = conn.sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        for pkt in conn.decoder.feed(data):
            got.append(pkt)
            if isinstance(pkt, Publish) and pkt.qos == 1:
                conn.sock.sendall(encode(Puback(pkt.packet_id), 5))
    assert not any(isinstance(p, Disconnect) for p in got), got
    return [p for p in got if isinstance(p, Publish)]


def close_all(conns: list[_Conn]) -> None:
    for c in conns:
        c.sock.close()
