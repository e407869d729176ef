"""Cross-node against same-node pairwise throughput (``python -m bench.cluster``).

Starts one redis-server and two ``shardmq serve --store redis --cluster`` nodes
(a and b), then runs ``bench.load pubsub --pattern pairwise --qos Q`` (each QoS
of ``--qos``) three ways, alternating within each repetition:

same-node    publishers and subscribers on node a (b idle): what a node does
             with the cluster on, its own traffic never touching Redis streams
cross-node   publishers on a, subscribers on b (``--sub-port``): every message
             goes a -> Redis stream -> b, and each PUBACK waits for its XADD
no-cluster   one ``--store redis`` broker without ``--cluster``: the baseline

With ``--redis-cluster`` the nodes share a Redis Cluster of three primaries
(all pinned to ``--redis-cpus``) instead of one redis-server, through a
``redis+cluster://`` URL; the Redis CPU reported is the three's sum.

Subscribers are not persistent (clean sessions): the store writes nothing per
message, so what is measured is the routing. Each run also reports
redis-server's CPU (cores, averaged over the whole load run, connecting and
warm-up included). Prints one JSON line per run and, with ``--markdown``, a
table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.brokers import Shardmq, free_cluster_port
from bench.persist import ROOT, RedisServer

KINDS = ("no-cluster", "same-node", "cross-node")


def load(
    args: argparse.Namespace, qos: int, pub_port: int, sub_port: int, pids: list[int]
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.load", "pubsub", "--pattern", "pairwise",
        "--pubs", str(args.pairs), "--subs", str(args.pairs), "--qos", str(qos),
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


class RedisCluster:
    """Three redis-server primaries joined by ``redis-cli --cluster create``."""

    def __init__(self, cpus: list[int]) -> None:
        flags = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        self.nodes = [RedisServer(cpus, free_cluster_port(), flags) for _ in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        for n in self.nodes:
            n.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for n in self.nodes:
            while True:
                out = subprocess.run(
                    [cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True
                ).stdout
                if "cluster_state:ok" in out:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not form")
                time.sleep(0.1)
        return self

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def node(redis: RedisServer | RedisCluster, node_id: str | None, cpus: list[int]) -> Shardmq:
    extra = ["--store", "redis", "--redis-url", redis.url, "--max-queued-messages", "100000"]
    if node_id is not None:
        extra += ["--cluster", "--node-id", node_id]
    broker = Shardmq(cpus=cpus, extra=tuple(extra))
    broker.start()
    return broker


def run(kind: str, qos: int, args: argparse.Namespace) -> dict[str, Any]:
    cpus = [int(c) for c in args.redis_cpus.split(",")]
    redis = (RedisCluster(cpus) if args.redis_cluster else RedisServer(cpus)).start()
    brokers: list[Shardmq] = []
    try:
        if kind == "no-cluster":
            a = node(redis, None, [0])
            brokers.append(a)
            pub_port, sub_port, pids = a.port, a.port, [a.pid]
        else:
            a = node(redis, "a", [0])
            brokers.append(a)
            b = node(redis, "b", [1] if (os.cpu_count() or 1) > 1 else [0])
            brokers.append(b)
            pub_port = a.port
            sub_port = a.port if kind == "same-node" else b.port
            pids = [a.pid, b.pid]
        cpu0, t0 = redis.cpu_seconds(), time.monotonic()
        result = load(args, qos, pub_port, sub_port, pids)
        result["redis_cpu"] = (redis.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        return result
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
    parser.add_argument("--qos", default="1", help="comma-separated, e.g. 0,1")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="a 3-primary Redis Cluster, not one server"
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    kinds = [(q, k) for q in map(int, args.qos.split(",")) for k in KINDS]
    results: dict[tuple[int, str], list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(args.repeat):
        for qos, kind in kinds:
            result = run(kind, qos, args)
            result["kind"] = kind
            result["qos"] = qos
            print(json.dumps(result), flush=True)
            results[qos, kind].append(result)
    if args.markdown:
        print(
            "| QoS | run | delivered msg/s (median) | lost | dup "
            "| node a CPU (cores) | redis CPU (cores) | p50 latency, ms | p99, ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for qos, kind in kinds:
            ok = [r for r in results[qos, kind] if "run_failed" not in r]
            if not ok:
                print(f"| {qos} | {kind} | failed | | | | | | |")
                continue
            rate = statistics.median(r["delivered_per_s"] for r in ok)
            lost = sum(r.get("lost", 0) for r in ok)
            dup = sum(r.get("dup", 0) for r in ok)
            cpu = statistics.median(r.get("broker_cpu", {}).get("cores", 0.0) for r in ok)
            rcpu = statistics.median(r["redis_cpu"] for r in ok)
            p50 = statistics.median(r["latency_us"]["p50"] for r in ok) / 1000
            p99 = statistics.median(r["latency_us"]["p99"] for r in ok) / 1000
            print(
                f"| {qos} | {kind} | {rate:,.0f} | {lost} | {dup} | {cpu:.2f} | {rcpu:.2f} "
                f"| {p50:.2f} | {p99:.2f} |"
            )


if __name__ == "__main__":
    main()
