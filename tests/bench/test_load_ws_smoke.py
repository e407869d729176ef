"""Smoke test of the load generator's WebSocket transport (``bench.load --transport ws``).

The frame codec is checked offline (a fake transport, every read boundary); then the
generator runs against a private shardmq with a WebSocket listener
(``python -m shardmq serve --host 127.0.0.1 --port P1 --ws-port P2``). Counts are tiny and
nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import wire
from bench.brokers import Shardmq
from bench.load import Meter, WsClient

ROOT = Path(__file__).resolve().parent.parent.parent


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted


def server_frame(payload: bytes, opcode: int = wire.WS_OP_BINARY) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 0x10000:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Decode masked client frames: [(opcode, unmasked payload)]."""
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b1 & 0x80, "client frames must be masked"
        n = b1 & 0x7F
        p = i + 2
        if n == 126:
            n = int.from_bytes(data[p : p + 2], "big")
            p += 2
        elif n == 127:
            n = int.from_bytes(data[p : p + 8], "big")
            p += 8
        mask = data[p : p + 4]
        p += 4
        out.append((b0 & 0x0F, wire.ws_unmask(data[p : p + n], mask)))
        i = p + n
    return out


def publish(pub: int, seq: int, size: int = 64) -> bytes:
    head, tail, pad = wire.publish_template("bench/0", 0, size, 5)
    return head + tail + wire.STAMP.pack(1, pub, seq) + pad


@pytest.mark.parametrize("step", [1, 3, 7, 100, 1 << 20])
def test_ws_client_codec_at_every_read_boundary(step: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        meter = Meter()
        client = WsClient(meter, True, loop, "127.0.0.1", 1, "/mqtt")
        raw = FakeTransport()
        client.connection_made(raw)
        request = raw.written.pop(0)
        assert request.startswith(b"GET /mqtt HTTP/1.1\r\n")
        assert b"Sec-WebSocket-Protocol: mqtt\r\n" in request
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + wire.ws_accept(client.ws_key)
            + b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )  # fmt: skip
        # 2,000 PUBLISH packets: split over frames of every header size, cut mid-packet,
        # with a ping in between and the response's last bytes in the same read.
        stream = b"".join(publish(0, s) for s in range(2000))
        cuts = [0, 50, 51, 300, 70_000, len(stream)]
        frames = [server_frame(stream[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
        frames.insert(2, server_frame(b"hi", wire.WS_OP_PING))
        wire_bytes = response + b"".join(frames)
        for k in range(0, len(wire_bytes), step):
            client.data_received(wire_bytes[k : k + step])
        assert client.upgraded.done() and client.upgraded.exception() is None
        assert meter.recv == 2000
        assert client.expected == {0: 2000}
        assert meter.dup == 0 and meter.errors == 0
        assert client_frames(b"".join(raw.written)) == [(wire.WS_OP_PONG, b"hi")]
        raw.written.clear()
        # Writes leave as masked binary frames, whatever their size.
        for payload in (b"\xc0\x00", bytes(range(256)) * 3, b"\x00" * 70_000):
            client.transport.write(payload)
        got = client_frames(b"".join(raw.written))
        assert got == [
            (wire.WS_OP_BINARY, b"\xc0\x00"),
            (wire.WS_OP_BINARY, bytes(range(256)) * 3),
            (wire.WS_OP_BINARY, b"\x00" * 70_000),
        ]
    finally:
        loop.close()


def test_ws_client_refuses_a_bad_accept() -> None:
    loop = asyncio.new_event_loop()
    try:
        client = WsClient(Meter(), True, loop, "127.0.0.1", 1, "/mqtt")
        raw = FakeTransport()
        client.connection_made(raw)
        client.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: bogus\r\n"
            b"Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        assert raw.aborted
        assert "Sec-WebSocket-Accept" in str(client.upgraded.exception())
    finally:
        loop.close()


@pytest.fixture(scope="module")
def shardmq_ws() -> Iterator[Shardmq]:
    with Shardmq(ws=True) as broker:
        yield broker


def run_load(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", *args, "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result: dict[str, Any] = json.loads(lines[0])
    return result


@pytest.mark.timeout(20)
def test_pubsub_over_websocket_qos1(shardmq_ws: Shardmq) -> None:
    result = run_load(
        "pubsub",
        "--transport", "ws",
        "--port", str(shardmq_ws.ws_port),
        "--pubs", "2",
        "--subs", "2",
        "--qos", "1",
        "--duration", "2",
        "--warmup", "0.5",
        "--rate", "2000",
        "--procs", "1",
        "--broker-pid", str(shardmq_ws.pid),
    )  # fmt: skip
    assert result["options"]["transport"] == "ws"
    assert result["delivered"] > 0
    assert result["lost"] == 0
    assert result["dup"] == 0
    assert result["errors"] == 0, result["error_kinds"]
    assert result["latency_us"]["count"] > 0


@pytest.mark.timeout(20)
def test_conn_over_websocket(shardmq_ws: Shardmq) -> None:
    result = run_load(
        "conn",
        "--transport", "ws",
        "--port", str(shardmq_ws.ws_port),
        "-n", "20",
        "--hold", "0.3",
        "--procs", "1",
    )  # fmt: skip
    assert result["connected"] == 20
    assert result["held"] == 20
    assert result["errors"] == 0, result["error_kinds"]


@pytest.mark.timeout(20)
def test_ws_to_the_tcp_port_fails_cleanly(shardmq_ws: Shardmq) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", "conn", "--transport", "ws", "--quiet"]
        + ["--port", str(shardmq_ws.port), "-n", "2", "--hold", "0", "--procs", "1"]
        + ["--connect-timeout", "2", "--max-failures", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["connected"] == 0
    assert result["errors"] == 2
