"""Persistent sessions: ``--store memory`` against ``--store redis`` (``python -m bench.persist``).

Two scenarios, each run for the memory store, the Redis store and Mosquitto (in
memory, ``persistence false``: the reference for what a broker without durable
acknowledgements does), alternating within each repetition:

P1  QoS 1 pairwise with persistent subscriber sessions: ``bench.load pubsub
    --pattern pairwise --qos 1 --session-expiry 300``; every QoS 1 message is
    bound for a persistent session, so with the Redis store every PUBACK waits
    for the Redis write of the delivery.
P2  Offline-queue drain: SESSIONS persistent subscribers subscribe and go away,
    a publisher queues MESSAGES QoS 1 messages for each (every PUBACK awaited),
    then they reconnect and read everything; reported: the queueing rate and the
    drain rate (messages delivered per second after the reconnect), and loss.

The broker is pinned to CPU 0; the generator and redis-server (appendonly yes,
appendfsync everysec: Redis's own durable default) share CPU 1, so Redis's CPU
is not taken from the broker. The figures go to stdout as JSON lines and, with
``--write``, to the "Persistent sessions" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import wire
from bench.brokers import Broker, Mosquitto, Shardmq, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


class RedisServer:
    def __init__(self, cpus: list[int], port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.cpus = cpus
        #: more redis-server flags (a Redis Cluster node's)
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        cpus = set(self.cpus)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with __import__("socket").create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Target:
    def __init__(self, name: str, store: str) -> None:
        self.name = name
        self.store = store
        self.redis: RedisServer | None = None
        self.broker: Broker | None = None

    def start(self, broker_cpus: list[int], side_cpus: list[int]) -> Broker:
        extra = ["--max-queued-messages", "100000"]
        if self.store == "mosquitto":
            self.broker = Mosquitto(cpus=broker_cpus).start()
            return self.broker
        if self.store == "redis":
            self.redis = RedisServer(side_cpus).start()
            extra += ["--store", "redis", "--redis-url", self.redis.url]
        self.broker = Shardmq(cpus=broker_cpus, extra=tuple(extra)).start()
        return self.broker

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.redis is not None:
            self.redis.stop()
        self.broker = self.redis = None


def proc_cpu(pid: int) -> float:
    p = psutil.Process(pid)
    total = 0.0
    for proc in [p, *p.children(recursive=True)]:
        t = proc.cpu_times()
        total += t.user + t.system
    return total


# -- P1 --------------------------------------------------------------------------------------


def run_p1(target: Target, args: argparse.Namespace, gen_cpus: list[int]) -> dict[str, Any]:
    broker = target.start([0], gen_cpus)
    try:
        cmd = [
            sys.executable, "-m", "bench.load", "pubsub", "--pattern", "pairwise",
            "--pubs", str(args.pairs), "--subs", str(args.pairs), "--qos", "1",
            "--session-expiry", "300", "--duration", str(args.duration), "--warmup", "2",
            "--port", str(broker.port), "--broker-pid", str(broker.pid), "--quiet",
        ]  # fmt: skip
        if gen_cpus:
            cmd += ["--cpus", ",".join(map(str, gen_cpus)), "--procs", str(len(gen_cpus))]
        r0 = target.redis.cpu_seconds() if target.redis else 0.0
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
        wall = time.monotonic() - t0
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"run_failed": proc.stderr.strip().splitlines()[-3:]}
        result: dict[str, Any] = json.loads(lines[-1])
        if target.redis:
            # whole run (connect, warm-up, drain included): an upper bound of its share
            result["redis_cpu_cores"] = round((target.redis.cpu_seconds() - r0) / wall, 3)
        return result
    finally:
        target.stop()


# -- P2 --------------------------------------------------------------------------------------


class Peer(asyncio.Protocol):
    """A minimal MQTT 5.0 client: counts PUBLISHes (acknowledging QoS 1) and acks."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acked = 0
        self.ack_event = asyncio.Event()
        self.received = 0
        self.seen: set[int] = set()
        self.done = asyncio.Event()
        self.expect = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        acks = []
        while True:
            if len(buf) - pos < 2:
                break
            got = wire.read_varint(bytes(buf[pos + 1 : pos + 5]), 0)
            if got is None:
                break
            length, used = got
            start = pos + 1 + used
            if len(buf) < start + length:
                break
            kind = buf[pos] >> 4
            body = bytes(buf[start : start + length])
            pos = start + length
            if kind == 2:
                self.connack.set_result(body[1])
            elif kind == 9:
                self.suback.set_result(None)
            elif kind == 4:
                self.acked += 1
                self.ack_event.set()
            elif kind == 3:
                tlen = struct.unpack_from(">H", body, 0)[0]
                pid = body[2 + tlen : 4 + tlen]
                plen, after = wire.read_varint(body, 4 + tlen) or (0, 5 + tlen)
                payload = body[after + plen :]
                self.seen.add(int.from_bytes(payload[:8], "big"))
                self.received += 1
                acks.append(wire.ack(4, pid))
                if self.expect and len(self.seen) >= self.expect:
                    self.done.set()
        del buf[:pos]
        if acks:
            self.transport.write(b"".join(acks))


async def _open(port: int, cid: str, clean: bool, expiry: int) -> Peer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_connection(Peer, "127.0.0.1", port)
    peer.transport.write(wire.connect(cid, 5, 60, clean=clean, expiry=expiry))
    code = await asyncio.wait_for(peer.connack, 10)
    if code != 0:
        raise RuntimeError(f"CONNACK 0x{code:02x}")
    return peer


async def _p2(port: int, sessions: int, messages: int, idle: float = 2.0) -> dict[str, Any]:
    tag = os.urandom(3).hex()
    subs = []
    for i in range(sessions):
        s = await _open(port, f"drain-{tag}-{i}", False, 300)
        s.transport.write(wire.subscribe(1, f"drain/{tag}/{i}", 1, 5))
        await asyncio.wait_for(s.suback, 10)
        subs.append(s)
    for s in subs:
        s.transport.write(b"\xe0\x00")  # DISCONNECT: the sessions stay
        s.transport.close()
    pub = await _open(port, f"drain-{tag}-pub", True, 0)
    window = 64
    started = time.monotonic()
    sent = 0
    total = sessions * messages
    pad = bytes(56)
    while sent < total:
        while sent - pub.acked < window and sent < total:
            i = sent % sessions
            topic = wire.utf8(f"drain/{tag}/{i}")
            pid = sent % 65535 + 1
            body = topic + struct.pack(">H", pid) + b"\x00" + sent.to_bytes(8, "big") + pad
            pub.transport.write(bytes([0x32]) + wire.varint(len(body)) + body)
            sent += 1
        pub.ack_event.clear()
        if sent - pub.acked >= window or sent >= total:
            await asyncio.wait_for(pub.ack_event.wait(), 30)
    while pub.acked < total:
        pub.ack_event.clear()
        await asyncio.wait_for(pub.ack_event.wait(), 30)
    queued_s = time.monotonic() - started
    pub.transport.close()

    started = time.monotonic()
    peers = []
    for i in range(sessions):
        p = await _open(port, f"drain-{tag}-{i}", False, 300)
        p.expect = messages
        if len(p.seen) >= messages:
            p.done.set()
        peers.append(p)
    # until every session has everything, or nothing more arrives for `idle` s
    everything = asyncio.ensure_future(asyncio.gather(*(p.done.wait() for p in peers)))
    last = -1
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(everything), idle)
            break
        except TimeoutError:
            seen = sum(len(p.seen) for p in peers)
            if seen == last:
                everything.cancel()
                break
            last = seen
    drain_s = time.monotonic() - started
    got = sum(len(p.seen) for p in peers)
    for p in peers:
        p.transport.close()
    return {
        "sessions": sessions,
        "messages_per_session": messages,
        "queued_per_s": round(total / queued_s, 1),
        "drained_per_s": round(got / drain_s, 1),
        "drain_s": round(drain_s, 3),
        "lost": total - got,
    }


def run_p2(target: Target, args: argparse.Namespace, gen_cpus: list[int]) -> dict[str, Any]:
    broker = target.start([0], gen_cpus)
    try:
        if gen_cpus:
            os.sched_setaffinity(0, set(gen_cpus))
        c0 = proc_cpu(broker.pid)
        t0 = time.monotonic()
        result = asyncio.run(_p2(broker.port, args.sessions, args.messages))
        result["broker_cpu_cores"] = round((proc_cpu(broker.pid) - c0) / (time.monotonic() - t0), 3)
        return result
    finally:
        target.stop()


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=20, help="P1 publisher/subscriber pairs")
    ap.add_argument("--duration", type=float, default=10.0, help="P1 measured seconds")
    ap.add_argument("--sessions", type=int, default=4, help="P2 persistent sessions")
    ap.add_argument("--messages", type=int, default=10_000, help="P2 messages per session")
    ap.add_argument("--only", choices=("P1", "P2"), default=None)
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    gen_cpus = [c for c in cpus if c != 0][:1] if len(cpus) > 1 else []
    targets = [Target("shardmq memory", "memory"), Target("shardmq redis", "redis"),
               Target("Mosquitto", "mosquitto")]  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"P1": {}, "P2": {}}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for rep in range(args.repeat):
        order = targets if rep % 2 == 0 else targets[::-1]
        for target in order:
            for key, fn in (("P1", run_p1), ("P2", run_p2)):
                if args.only and key != args.only:
                    continue
                result = fn(target, args, gen_cpus)
                result.update(scenario=key, target=target.name, repetition=rep)
                print(json.dumps(result), flush=True)
                runs[key].setdefault(target.name, []).append(result)
    ended = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    table = summarize(runs, args, started, ended, argv if argv is not None else sys.argv[1:])
    print(table)
    if args.write:
        write_results(table)
    return 0


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def _cpu(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r.get(key, {}).get("cores") for r in rows]
    nums = [v for v in values if isinstance(v, int | float)]
    return statistics.median(nums) if nums else None


def summarize(
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    args: argparse.Namespace,
    started: str,
    ended: str,
    argv: list[str],
) -> str:
    cmd = " ".join(["python -m bench.persist", *[a for a in argv if a != "--write"]])
    out = [
        "## Persistent sessions: memory store, Redis store, Mosquitto",
        "",
        f"`{cmd}` ({started} to {ended}; median of {args.repeat} repetitions; broker on",
        "CPU 0, generator and redis-server on CPU 1; Redis with appendonly yes, appendfsync",
        "everysec). Mosquitto runs with `persistence false`: it acknowledges from memory.",
        "A generator CPU share near 1.0 means the generator, not the broker, bounds that",
        "figure (the broker's rate is then higher than shown). Target: the Redis store at",
        "0.5x the memory store or more, with no loss.",
        "",
    ]
    p1 = runs["P1"]
    if p1:
        mem = _median(p1.get("shardmq memory", []), "delivered_per_s")
        out += [
            f"P1: QoS 1 pairwise, {args.pairs} pairs, persistent subscriber sessions "
            f"(session expiry 300 s), {args.duration:g} s measured.",
            "",
            "| broker | delivered msg/s | / memory store | lost | dup | broker CPU (cores)"
            " | generator CPU share | redis-server CPU (cores) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, rows in p1.items():
            rate = _median(rows, "delivered_per_s")
            ratio = f"{rate / mem:.2f}x" if rate and mem else ""
            lost = sum(int(r.get("lost", 0)) for r in rows)
            dup = sum(int(r.get("dup", 0)) for r in rows)
            bcpu = _cpu(rows, "broker_cpu")
            gen = [r.get("generator_cpu", {}).get("share") for r in rows]
            gshare = statistics.median([g for g in gen if g is not None]) if any(gen) else None
            rcpu = _median(rows, "redis_cpu_cores")
            out.append(
                f"| {name} | {rate:,.0f} | {ratio} | {lost} | {dup} | "
                f"{'' if bcpu is None else bcpu} | {'' if gshare is None else gshare} | "
                f"{'' if rcpu is None else rcpu} |"
                if rate is not None
                else f"| {name} | failed: {rows[0].get('run_failed')} | | | | | | |"
            )
        out.append("")
    p2 = runs["P2"]
    if p2:
        mem = _median(p2.get("shardmq memory", []), "drained_per_s")
        out += [
            f"P2: offline-queue drain, {args.sessions} sessions x {args.messages:,} QoS 1 "
            "messages queued while offline (each PUBACK awaited, 64 in flight), then "
            "delivered after the reconnect.",
            "",
            "| broker | queued msg/s | drained msg/s | drain / memory store | drain time (s) "
            "| lost | broker CPU (cores) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, rows in p2.items():
            q = _median(rows, "queued_per_s")
            d = _median(rows, "drained_per_s")
            ratio = f"{d / mem:.2f}x" if d and mem else ""
            lost = sum(int(r.get("lost", 0)) for r in rows)
            out.append(
                f"| {name} | {q or 0:,.0f} | {d or 0:,.0f} | {ratio} | "
                f"{_median(rows, 'drain_s')} | {lost} | {_median(rows, 'broker_cpu_cores')} |"
            )
        out.append("")
    return "\n".join(out)


def write_results(table: str) -> None:
    path = BENCH / "RESULTS.md"
    text = path.read_text()
    head = "## Persistent sessions"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + table.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + table.rstrip() + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
