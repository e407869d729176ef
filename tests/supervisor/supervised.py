"""A supervisor with small test workers, run as a subprocess by the tests.

``python -m tests.supervisor.supervised --mode echo --workers 2`` prints the
bound ports as one JSON line on stdout, then supervises. Each worker answers
every TCP connection with one JSON line describing itself and closes it.

Modes (the worker function each worker runs):

- ``echo``: serve and heartbeat every 0.1 s until SIGTERM; count SIGHUPs.
- ``stuck``: like echo, but the first generation of worker 0 blocks its event
  loop 0.3 s after start (``time.sleep`` in a callback), so its heartbeats stop.
- ``config``: worker 1 returns EXIT_CONFIG at once; the others serve.
- ``boot``: worker 1 raises at boot; the others serve.
- ``crash``: the first generation of worker 0 raises from its event loop
  after its first heartbeats; the others serve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from shardmq.supervisor import EXIT_CONFIG, EXIT_OK, Supervisor, WorkerContext

BEAT = 0.1


def describe(ctx: WorkerContext, hups: int) -> bytes:
    info = {
        "worker": ctx.worker_id,
        "workers": ctx.workers,
        "pid": os.getpid(),
        "generation": ctx.generation,
        "affinity": sorted(os.sched_getaffinity(0)),
        "port": ctx.sockets[0].getsockname()[1],
        "listeners": len(ctx.sockets),
        "run_dir": ctx.run_dir,
        "hups": hups,
    }
    return json.dumps(info).encode() + b"\n"


async def serve(ctx: WorkerContext, stuck: bool, crash: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    hups = 0

    def on_hup() -> None:
        nonlocal hups
        hups += 1

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(describe(ctx, hups))
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(on_connect, sock=sock) for sock in ctx.sockets]

    def beat() -> None:
        ctx.heartbeat()
        loop.call_later(BEAT, beat)

    beat()
    if stuck:
        loop.call_later(0.3, time.sleep, 3600)
    if crash:
        await asyncio.sleep(0.3)
        raise RuntimeError("crashed: test worker")
    await stop.wait()
    for server in servers:
        server.close()


def worker(ctx: WorkerContext, mode: str) -> int:
    if mode == "config" and ctx.worker_id == 1:
        return EXIT_CONFIG
    if mode == "boot" and ctx.worker_id == 1:
        raise RuntimeError("cannot boot: test worker")
    stuck = mode == "stuck" and ctx.worker_id == 0 and ctx.generation == 1
    crash = mode == "crash" and ctx.worker_id == 0 and ctx.generation == 1
    asyncio.run(serve(ctx, stuck, crash))
    return EXIT_OK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--mode", default="echo", choices=["echo", "stuck", "config", "boot", "crash"]
    )
    parser.add_argument("--workers", default="2")
    parser.add_argument("--host", action="append")
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    mode = args.mode
    supervisor = Supervisor(
        int(args.workers) if args.workers.isdigit() else args.workers,
        [(host, 0) for host in args.host or ["127.0.0.1"]],
        lambda ctx: worker(ctx, mode),
        pin=args.pin,
        heartbeat_timeout=args.heartbeat_timeout,
        shutdown_timeout=args.shutdown_timeout,
    )
    print(json.dumps(supervisor.ports), flush=True)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
