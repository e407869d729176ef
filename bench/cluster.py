"""Cross-node against same-node QoS 1 pairwise throughput (``python -m bench.cluster``).

Starts one redis-server and two ``shardmq serve --store redis --cluster`` nodes
(a and b), then runs ``bench.load pubsub --pattern pairwise --qos 1`` three ways,
alternating within each repetition:

same-node    publishers and subscribers on node a (b idle): what a node does
             with the cluster on, its own traffic never touching Redis streams
cross-node   publishers on a, subscribers on b (``--sub-port``): every message
             goes a -> Redis stream -> b, and each PUBACK waits for its XADD
no-cluster   one ``--store redis`` broker without ``--cluster``: the baseline

Subscribers are not persistent (clean sessions): the store writes nothing per
message, so what is measured is the routing. Prints one JSON line per run and,
with ``--markdown``, a table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.brokers import Shardmq
from bench.persist import ROOT, RedisServer


def load(args: argparse.Namespace, pub_port: int, sub_port: int, pids: list[int]) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.load", "pubsub", "--pattern", "pairwise",
        "--pubs", str(args.pairs), "--subs", str(args.pairs), "--qos", "1",
        "--duration", str(args.duration), "--warmup", "2", "--quiet",
        "--port", str(pub_port), "--sub-port", str(sub_port), "--broker-pid", str(pids[0]),
    ]  # fmt: skip
    if args.gen_cpus:
        cpus = args.gen_cpus.split(",")
        cmd += ["--cpus", args.gen_cpus, "--procs", str(len(cpus))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"run_failed": proc.stderr.strip().splitlines()[-3:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def node(redis: RedisServer, node_id: str | None, cpus: list[int]) -> Shardmq:
    extra = ["--store", "redis", "--redis-url", redis.url, "--max-queued-messages", "100000"]
    if node_id is not None:
        extra += ["--cluster", "--node-id", node_id]
    return Shardmq(cpus=cpus, extra=tuple(extra)).start()


def run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    redis = RedisServer([int(c) for c in args.redis_cpus.split(",")]).start()
    brokers: list[Shardmq] = []
    try:
        if kind == "no-cluster":
            a = node(redis, None, [0])
            brokers.append(a)
            return load(args, a.port, a.port, [a.pid])
        a = node(redis, "a", [0])
        brokers.append(a)
        b = node(redis, "b", [1] if (os.cpu_count() or 1) > 1 else [0])
        brokers.append(b)
        sub_port = a.port if kind == "same-node" else b.port
        return load(args, a.port, sub_port, [a.pid, b.pid])
    finally:
        for b in brokers:
            b.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gen-cpus", default="", help="pin the generator, e.g. 1")
    parser.add_argument("--redis-cpus", default="1", help="pin redis-server, e.g. 1")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    kinds = ("no-cluster", "same-node", "cross-node")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            result = run(kind, args)
            result["kind"] = kind
            print(json.dumps(result), flush=True)
            results[kind].append(result)
    if args.markdown:
        print("| run | delivered msg/s (median) | lost | dup | p50 latency, ms | p99, ms |")
        print("|---|---|---|---|---|---|")
        for kind in kinds:
            ok = [r for r in results[kind] if "run_failed" not in r]
            if not ok:
                print(f"| {kind} | failed | | | | |")
                continue
            rate = statistics.median(r["delivered_per_s"] for r in ok)
            lost = sum(r.get("lost", 0) for r in ok)
            dup = sum(r.get("dup", 0) for r in ok)
            p50 = statistics.median(r["latency_us"]["p50"] for r in ok) / 1000
            p99 = statistics.median(r["latency_us"]["p99"] for r in ok) / 1000
            print(f"| {kind} | {rate:,.0f} | {lost} | {dup} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
