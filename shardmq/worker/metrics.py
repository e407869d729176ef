"""A worker's figures, and the whole broker's in Prometheus text format.

The hot path only bumps the plain integers of ``shard.Stats`` (the ones
``$SYS`` reports, ``Shard.sys_figures``); nothing here adds work per message.
:func:`worker_figures` reads them, with the gauges counted when asked and the
process's CPU and memory (psutil), into one msgpack-ready dict. It runs in a
worker's own loop: worker 0's for its own, and each other worker's as its
answer to a FIGURES_ASK frame over the fabric (``cluster/local.py``). Worker
0's HTTP side (``http.py``) gathers them (:func:`gather`) and renders them
with prometheus_client (:func:`render_prometheus`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from .shard import Shard

#: a peer that does not answer within this is unresponsive (/healthz 503)
ASK_TIMEOUT = 1.0


def worker_figures(shard: Shard) -> dict[str, Any]:
    """This worker's figures: the $SYS counters, CPU seconds and memory."""
    sys = shard.sys_figures()
    proc = psutil.Process()
    cpu = proc.cpu_times()
    return {
        "worker": shard.shard_id,
        "connections": sys["clients/connected"],
        "connections_total": shard.stats.connections_total,
        "messages_received": sys["messages/received"],
        "messages_sent": sys["messages/sent"],
        "bytes_received": sys["bytes/received"],
        "bytes_sent": sys["bytes/sent"],
        "subscriptions": sys["subscriptions/count"],
        "retained": len(shard.retained),
        "cpu_seconds": cpu.user + cpu.system,
        "rss_bytes": proc.memory_info().rss,
    }


async def gather(shard: Shard) -> tuple[list[dict[str, Any]], list[int]]:
    """Every worker's figures, by worker id, and the workers that did not
    answer within ASK_TIMEOUT (down, or their loop stalled)."""
    figures = [worker_figures(shard)]
    fabric = shard.fabric
    if not fabric.distributed or not hasattr(fabric, "ask_figures"):
        return figures, []
    peers = [p for p in range(fabric.workers) if p != shard.shard_id]
    answers = await asyncio.gather(*(fabric.ask_figures(p, ASK_TIMEOUT) for p in peers))
    missing = []
    for peer, answer in zip(peers, answers, strict=True):
        if answer is None:
            missing.append(peer)
        else:
            figures.append(answer)
    figures.sort(key=lambda f: f["worker"])
    return figures, missing


class _Figures(Collector):
    def __init__(self, figures: list[dict[str, Any]]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figs = self.figures

        def total(key: str) -> float:
            return float(sum(f[key] for f in figs))

        def per_worker(metric: Any, key: str) -> Any:
            for f in figs:
                metric.add_metric([str(f["worker"])], f[key])
            return metric

        yield per_worker(
            GaugeMetricFamily("shardmq_connections", "Open client connections.", labels=["worker"]),
            "connections",
        )
        for name, key, text in (
            ("shardmq_connections", "connections_total", "Connections accepted."),
            ("shardmq_messages_received", "messages_received", "PUBLISH packets received."),
            ("shardmq_messages_sent", "messages_sent", "Messages delivered to clients."),
            ("shardmq_bytes_received", "bytes_received", "Bytes read from clients."),
            ("shardmq_bytes_sent", "bytes_sent", "Bytes written to clients."),
        ):
            yield CounterMetricFamily(name, text, value=total(key))
        yield GaugeMetricFamily(
            "shardmq_subscriptions", "Subscriptions held.", value=total("subscriptions")
        )
        # every worker holds every retained message: the count is not summed
        yield GaugeMetricFamily(
            "shardmq_retained_messages",
            "Retained messages.",
            value=max(f["retained"] for f in figs),
        )
        yield per_worker(
            CounterMetricFamily(
                "shardmq_worker_cpu_seconds",
                "CPU seconds of the worker process.",
                labels=["worker"],
            ),
            "cpu_seconds",
        )
        yield per_worker(
            GaugeMetricFamily(
                "shardmq_worker_resident_memory_bytes",
                "Resident memory of the worker process.",
                labels=["worker"],
            ),
            "rss_bytes",
        )


def render_prometheus(figures: list[dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    return generate_latest(registry)
