"""A worker's figures, and the whole broker's as Prometheus and JSON.

Theory of operation
-------------------
The hot path only bumps the plain integers of ``shard.Stats`` (the same ones
``$SYS`` reports). :func:`worker_figures` reads them, with the gauges that are
counted when asked (connections, sessions, queued messages), into one dict of
numbers; it runs in a worker's own loop: worker 0's for its own, and for each
other worker in that worker's loop, as the answer to a FIGURES_ASK frame over
the fabric (``cluster/local.py``). Worker 0's HTTP side (``http.py``) gathers
them (:func:`gather`) and renders them with prometheus_client
(:func:`render_prometheus`) or as JSON (:func:`stats_json`).

Latency: with metrics on, :class:`LatencyProbe` wraps the shard's ``route``
and ``flush`` on the instance (with metrics off the class methods run as
before, untouched). The first message routed in a loop iteration is
stamped; the flush that ends the iteration, which hands its deliveries to
the transports, observes the time since. One sample per iteration, whatever
the traffic; the same sample feeds the busiest-topics table (bounded to
TOPICS_KEPT). Messages from other workers are not sampled (they reach the
shard through ``route_local``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..protocol.session import Message

if TYPE_CHECKING:
    from .shard import Shard

#: upper bounds (seconds) of the latency histogram's buckets
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: topics the busiest-topics sample remembers; the least seen go first
TOPICS_KEPT = 256
#: a peer that does not answer within this is not responsive (/healthz 503)
ASK_TIMEOUT = 1.0


class LatencyProbe:
    """Publish-to-delivery latency, one sample per loop iteration (see above)."""

    def __init__(self, shard: Shard) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.topics: dict[str, int] = {}
        self._t0 = 0.0
        route = shard.route
        flush = shard.flush
        clock = time.perf_counter
        topics = self.topics

        def probed_route(msg: Message) -> int:
            if not self._t0:
                self._t0 = clock()
                topic = msg.topic
                topics[topic] = topics.get(topic, 0) + 1
                if len(topics) > TOPICS_KEPT:
                    self._prune()
            return route(msg)

        def probed_flush() -> None:
            flush()
            t0 = self._t0
            if t0:
                self._t0 = 0.0
                self.observe(clock() - t0)

        # instance attributes shadow the methods only on a probed shard
        shard.route = probed_route  # type: ignore[method-assign]
        shard.flush = probed_flush  # type: ignore[method-assign]

    def observe(self, seconds: float) -> None:
        self.total += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def _prune(self) -> None:
        keep = sorted(self.topics.items(), key=lambda kv: kv[1], reverse=True)[: TOPICS_KEPT // 2]
        self.topics.clear()
        self.topics.update(keep)


def worker_figures(shard: Shard, probe: LatencyProbe | None = None) -> dict[str, Any]:
    """This worker's figures: counters, gauges, CPU and memory (msgpack-ready)."""
    st = shard.stats
    sessions = shard.sessions
    online = sum(1 for s in sessions.values() if s.connection is not None)
    proc = psutil.Process()
    cpu = proc.cpu_times()
    listeners: dict[str, int] = {}
    main = f"tcp:{shard.config.port}"
    for conn in shard.connections:
        load = conn.load
        name = load.name if load is not None and load.name else main
        listeners[name] = listeners.get(name, 0) + 1
    fabric = shard.fabric
    link = fabric.link_traffic() if hasattr(fabric, "link_traffic") else {}
    node_link: Any = getattr(fabric, "link", None)
    nodes = (
        {
            "frames_sent": node_link.frames_sent,
            "bytes_sent": node_link.bytes_sent,
            "bytes_received": node_link.bytes_received,
        }
        if node_link is not None
        else {}
    )
    store = shard.store
    return {
        "worker": shard.shard_id,
        "pid": os.getpid(),
        "connections": len(shard.connections),
        "connections_total": st.connections_total,
        "received_qos": list(st.received_qos),
        "sent_qos": [
            st.messages_sent - st.sent_qos[1] - st.sent_qos[2],
            st.sent_qos[1],
            st.sent_qos[2],
        ],
        "bytes_received": st.bytes_received,
        "bytes_sent": st.bytes_sent,
        "dropped": {
            "queue_full": st.dropped_queue_full,
            "expired": st.dropped_expired,
            "slow_consumer": st.dropped_slow_consumer,
            "acl": st.dropped_acl,
            "too_large": max(
                0,
                st.messages_dropped
                - st.dropped_queue_full
                - st.dropped_slow_consumer
                - st.dropped_acl,
            ),
        },
        "subscriptions": len(shard.trie) + len(shard.shared),
        "retained": len(shard.retained),
        "sessions_online": online,
        "sessions_offline": len(sessions) - online,
        "queued": sum(len(s.pending) for s in sessions.values()),
        "auth_failures": st.auth_failures,
        "listeners": listeners,
        "link": link,
        "node_link": nodes,
        "cpu_seconds": cpu.user + cpu.system,
        "rss_bytes": proc.memory_info().rss,
        "latency": [list(probe.counts), probe.total] if probe is not None else None,
        "topics": dict(probe.topics) if probe is not None else {},
        "store_available": None if store is None else bool(getattr(store, "available", True)),
        "uptime": time.time() - shard.started,
    }


async def gather(
    shard: Shard, probe: LatencyProbe | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every worker's figures (in worker order) and the workers that did not
    answer within ASK_TIMEOUT (down, or its loop stalled)."""
    figures = [worker_figures(shard, probe)]
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


# -- Prometheus --------------------------------------------------------------------


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
        yield per_worker(
            CounterMetricFamily("shardmq_connections", "Connections accepted.", labels=["worker"]),
            "connections_total",
        )
        for name, key, text in (
            ("shardmq_messages_received", "received_qos", "PUBLISH packets received."),
            ("shardmq_messages_sent", "sent_qos", "Messages delivered to clients."),
        ):
            metric = CounterMetricFamily(name, text, labels=["qos"])
            for qos in range(3):
                metric.add_metric([str(qos)], sum(f[key][qos] for f in figs))
            yield metric
        yield CounterMetricFamily(
            "shardmq_bytes_received", "Bytes read from clients.", value=total("bytes_received")
        )
        yield CounterMetricFamily(
            "shardmq_bytes_sent", "Bytes written to clients.", value=total("bytes_sent")
        )
        dropped = CounterMetricFamily(
            "shardmq_messages_dropped", "Messages not delivered, by reason.", labels=["reason"]
        )
        for reason in figs[0]["dropped"]:
            dropped.add_metric([reason], sum(f["dropped"][reason] for f in figs))
        yield dropped
        yield GaugeMetricFamily(
            "shardmq_subscriptions", "Subscriptions held.", value=total("subscriptions")
        )
        # every worker holds every retained message: the count is not summed
        yield GaugeMetricFamily(
            "shardmq_retained_messages",
            "Retained messages.",
            value=max(f["retained"] for f in figs),
        )
        sessions = GaugeMetricFamily("shardmq_sessions", "Sessions.", labels=["state"])
        sessions.add_metric(["online"], total("sessions_online"))
        sessions.add_metric(["offline"], total("sessions_offline"))
        yield sessions
        yield GaugeMetricFamily(
            "shardmq_queued_messages", "Messages queued for sessions.", value=total("queued")
        )
        yield CounterMetricFamily(
            "shardmq_auth_failures",
            "CONNECTs refused for their credentials.",
            value=total("auth_failures"),
        )
        listeners = GaugeMetricFamily(
            "shardmq_listener_connections", "Open connections by listener.", labels=["listener"]
        )
        for name in sorted({name for f in figs for name in f["listeners"]}):
            listeners.add_metric([name], sum(f["listeners"].get(name, 0) for f in figs))
        yield listeners
        link_frames = CounterMetricFamily(
            "shardmq_link_messages",
            "Frames sent to the other workers (scope=workers) or nodes (scope=nodes).",
            labels=["worker", "scope"],
        )
        link_bytes = CounterMetricFamily(
            "shardmq_link_bytes",
            "Bytes exchanged with the other workers or, through Redis, nodes.",
            labels=["worker", "scope", "direction"],
        )
        for f in figs:
            w = str(f["worker"])
            for scope, key in (("workers", "link"), ("nodes", "node_link")):
                link = f.get(key)
                if link:
                    link_frames.add_metric([w, scope], link["frames_sent"])
                    link_bytes.add_metric([w, scope, "sent"], link["bytes_sent"])
                    link_bytes.add_metric([w, scope, "received"], link["bytes_received"])
        yield link_frames
        yield link_bytes
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
        samples = [f["latency"] for f in figs if f["latency"] is not None]
        if samples:
            counts = [sum(s[0][i] for s in samples) for i in range(len(BUCKETS) + 1)]
            buckets = []
            running = 0
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                running += count
                buckets.append((bound, running))
            yield HistogramMetricFamily(
                "shardmq_delivery_latency_seconds",
                "Routing of a publish to the write of its deliveries, one sample per loop"
                " iteration.",
                buckets=buckets,
                sum_value=sum(s[1] for s in samples),
            )


def render_prometheus(figures: list[dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    return generate_latest(registry)


# -- JSON for the status page -------------------------------------------------------

_TOTALS = ("connections", "messages_received", "messages_sent", "bytes_received", "bytes_sent")


def stats_json(
    figures: list[dict[str, Any]], missing: list[int], nodes: int | None
) -> dict[str, Any]:
    """The status page's feed (``/api/v1/stats``): totals, each worker, topics."""
    topics: dict[str, int] = {}
    for f in figures:
        for topic, n in f["topics"].items():
            topics[topic] = topics.get(topic, 0) + n
    busiest = sorted(topics.items(), key=lambda kv: kv[1], reverse=True)[:10]
    workers = [
        {
            "worker": f["worker"],
            "pid": f["pid"],
            "connections": f["connections"],
            "messages_received": sum(f["received_qos"]),
            "messages_sent": sum(f["sent_qos"]),
            "bytes_received": f["bytes_received"],
            "bytes_sent": f["bytes_sent"],
            "cpu_seconds": f["cpu_seconds"],
            "rss_bytes": f["rss_bytes"],
        }
        for f in figures
    ]
    return {
        "time": time.time(),
        "uptime": max(f["uptime"] for f in figures),
        "nodes": nodes,
        "workers": workers,
        "unresponsive_workers": missing,
        **{key: sum(w[key] for w in workers) for key in _TOTALS},
        "sessions": {
            "online": sum(f["sessions_online"] for f in figures),
            "offline": sum(f["sessions_offline"] for f in figures),
        },
        "subscriptions": sum(f["subscriptions"] for f in figures),
        "retained": max(f["retained"] for f in figures),
        "queued": sum(f["queued"] for f in figures),
        "dropped": sum(sum(f["dropped"].values()) for f in figures),
        "topics": [{"topic": t, "samples": n} for t, n in busiest],
    }
