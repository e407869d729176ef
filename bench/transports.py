"""Transport micro-benchmarks behind two choices in shardmq/worker/.

``python -m bench.transports ws``: the server-side WebSocket receive path
(parse + unmask of client frames) in the two sans-I/O cores considered,
``websockets`` (chosen) and ``wsproto`` (``pip install wsproto`` to compare).

``python -m bench.transports tls``: the TLS receive path of our TlsLayer
(``ssl.SSLObject`` over memory BIOs) against uvloop's own TLS transport, one
process, a TLS client writing 512 MiB in 64 KiB chunks to a counting protocol.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import tempfile
import time
from typing import Any


def _client_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 0x10000:
        head = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def bench_ws() -> None:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    try:
        from wsproto.connection import Connection, ConnectionType
    except ImportError:
        Connection = None  # noqa: N806
    for size, count in ((64, 50_000), (1024, 50_000), (65536, 2000), (1 << 20, 100)):
        frame = _client_frame(os.urandom(size))
        per_chunk = max(1, (256 * 1024) // len(frame))
        chunk = frame * per_chunk
        reps = max(1, count // per_chunk)
        total = reps * per_chunk * size
        parser = ServerProtocol(state=State.OPEN, max_size=None)
        start = time.perf_counter()
        for _ in range(reps):
            parser.receive_data(chunk)
            for event in parser.events_received():
                assert len(event.data) == size  # type: ignore[union-attr]
        rate = total / (time.perf_counter() - start) / 1e6
        line = f"{size:>8} B frames: websockets {rate:8.1f} MB/s"
        if Connection is not None:
            conn = Connection(ConnectionType.SERVER)
            start = time.perf_counter()
            for _ in range(reps):
                conn.receive_data(chunk)
                for _event in conn.events():
                    pass
            line += f"   wsproto {total / (time.perf_counter() - start) / 1e6:8.1f} MB/s"
        print(line)


async def _tls_run(kind: str, ca: Any, certfile: str) -> float:
    from shardmq.worker.tls import ServerContext, TlsLayer

    total = 512 * 1024 * 1024
    chunk = b"x" * 65536
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    class Sink(asyncio.Protocol):
        received = 0

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received >= total and not done.done():
                done.set_result(None)

    context = ServerContext(certfile, None, None, False, None, "")
    if kind == "layer":
        server = await loop.create_server(lambda: TlsLayer(Sink(), context, 10.0), "127.0.0.1", 0)
    else:
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=context.context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context, server_hostname="127.0.0.1"
    )
    start = time.perf_counter()
    sent = 0
    while sent < total:
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()
    await done
    elapsed = time.perf_counter() - start
    writer.close()
    server.close()
    return total / elapsed / 1e6


def bench_tls() -> None:
    import trustme
    import uvloop

    async def main() -> None:
        ca = trustme.CA()
        with tempfile.TemporaryDirectory() as tmp:
            certfile = os.path.join(tmp, "server.pem")
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(certfile)
            for _ in range(3):
                for kind in ("uvloop-ssl", "layer"):
                    print(f"{kind:11s} {await _tls_run(kind, ca, certfile):7.0f} MB/s")

    uvloop.run(main())


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "ws"
    {"ws": bench_ws, "tls": bench_tls}[which]()
