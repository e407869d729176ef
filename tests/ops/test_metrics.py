"""`shardmq serve --workers 2 --metrics-port P`: /metrics (parsed with
prometheus_client's own parser), /healthz and /readyz, through urllib and
real MQTT clients. Every worker's figures are summed into one endpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Client
from tests.redis_server import RedisServer, redis_server_path
from tests.storage.serve import Serve, free_port

DEADLINE = 10.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MetricsServe(Serve):
    def __init__(self, workers: int, store: list[str] | None = None) -> None:
        self.metrics_port = free_port()
        super().__init__(store or [], workers, "--metrics-port", str(self.metrics_port))


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(condition: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.05)


def metrics(port: int) -> Samples:
    """Every sample of /metrics: (sample name, sorted labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200
    # one TYPE line per family name, as Prometheus' own parser demands
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(types)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def per_worker(samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["worker"]: v for (n, labels), v in samples.items() if n == name}


def worker_pids(serve: Serve) -> list[int]:
    assert serve.proc is not None
    return [p.pid for p in psutil.Process(serve.proc.pid).children()]


def summed(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_metrics_are_one_endpoint_summed_over_both_workers(broker: MetricsServe) -> None:
    port = broker.metrics_port
    before = metrics(port)
    clients = [Client(broker.port, f"metrics-{i}") for i in range(6)]
    for client in clients:
        client.connect()
    try:
        # six connections wherever the kernel put them, both workers reporting
        wait_for(
            lambda: sum(per_worker(metrics(port), "shardmq_connections").values()) == 6,
            "connections gauge 6",
        )
        now = metrics(port)
        assert set(per_worker(now, "shardmq_connections")) == {"0", "1"}
        assert set(per_worker(now, "shardmq_worker_resident_memory_bytes")) == {"0", "1"}
        assert all(v > 0 for v in per_worker(now, "shardmq_worker_resident_memory_bytes").values())
        assert set(per_worker(now, "shardmq_worker_cpu_seconds_total")) == {"0", "1"}
        assert (
            summed(now, "shardmq_connections_total") - summed(before, "shardmq_connections_total")
            == 6
        )

        sub = clients[0]
        sub.subscribe("ops/metrics/t", 1)
        wait_for(lambda: metrics(port)[("shardmq_subscriptions", ())] == 1, "1 subscription")
        n = 12
        for i in range(n):
            clients[1 + i % 5].publish("ops/metrics/t", f"m{i}", qos=1)
        assert sorted(sub.get().payload for _ in range(n)) == sorted(
            f"m{i}".encode() for i in range(n)
        )

        def moved(name: str, **labels: str) -> float:
            return summed(metrics(port), name, **labels) - summed(before, name, **labels)

        wait_for(lambda: moved("shardmq_messages_sent_total") >= n, f"{n} sent")
        # by QoS: exactly the n QoS 1 messages, nothing at QoS 0 or 2
        for qos, expected in (("0", 0), ("1", n), ("2", 0)):
            assert moved("shardmq_messages_received_total", qos=qos) == expected
            assert moved("shardmq_messages_sent_total", qos=qos) == expected
        assert moved("shardmq_bytes_received_total") > 0
        assert moved("shardmq_bytes_sent_total") > 0
    finally:
        for client in clients:
            client.disconnect()
    wait_for(
        lambda: sum(per_worker(metrics(port), "shardmq_connections").values()) == 0,
        "connections back to 0",
    )


def test_retained_messages_are_not_counted_once_per_worker(broker: MetricsServe) -> None:
    pub = Client(broker.port, "metrics-retainer")
    pub.connect()
    try:
        pub.publish("ops/metrics/retained", "kept", qos=1, retain=True)
        wait_for(
            lambda: metrics(broker.metrics_port)[("shardmq_retained_messages", ())] == 1,
            "1 retained message",
        )
    finally:
        pub.publish("ops/metrics/retained", "", qos=1, retain=True)
        pub.disconnect()


def test_healthz_is_503_while_a_worker_is_stopped(broker: MetricsServe) -> None:
    port = broker.metrics_port
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz")[0] == 200
    pids = worker_pids(broker)
    assert len(pids) == 2
    # whichever worker does not serve HTTP (the one that is not worker 0)
    served_by = {p.pid for p in psutil.net_connections("tcp") if p.laddr and p.laddr.port == port}
    others = [pid for pid in pids if pid not in served_by] or pids[1:]
    os.kill(others[0], signal.SIGSTOP)
    try:
        status, text = get(port, "/healthz")
        assert status == 503
        assert "unresponsive" in text
        # /metrics still answers, without the stopped worker
        assert len(per_worker(metrics(port), "shardmq_connections")) == 1
    finally:
        os.kill(others[0], signal.SIGCONT)
    wait_for(lambda: get(port, "/healthz")[0] == 200, "/healthz 200 again")


def test_one_worker_needs_no_fabric() -> None:
    serve = MetricsServe(1)
    serve.start()
    try:
        client = Client(serve.port, "metrics-single")
        client.connect()
        try:
            assert per_worker(metrics(serve.metrics_port), "shardmq_connections") == {"0": 1}
            assert get(serve.metrics_port, "/healthz")[0] == 200
            assert get(serve.metrics_port, "/readyz")[0] == 200
        finally:
            client.disconnect()
    finally:
        serve.close()


def test_metrics_are_off_by_default() -> None:
    serve = Serve([], 1)
    serve.start()
    try:
        assert serve.proc is not None
        tree = [serve.proc.pid, *worker_pids(serve)]
        listening = {
            c.laddr.port
            for pid in tree
            for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {serve.port}  # the MQTT port, and nothing else
    finally:
        serve.close()


def test_a_taken_metrics_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "shardmq", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(free_port()), "--metrics-port", str(metrics_port)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "metrics_port" in proc.stderr and str(metrics_port) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")
def test_readyz_is_503_while_the_redis_store_is_unreachable(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    store = ["--store", "redis", "--redis-url", redis.url, "--store-timeout", "1"]
    serve = MetricsServe(2, store)
    try:
        serve.start()
        port = serve.metrics_port
        wait_for(lambda: get(port, "/readyz")[0] == 200, "/readyz 200")
        redis.stop()
        # the store notices by its own ping (every second, store_timeout 1 s)
        wait_for(lambda: get(port, "/readyz") == (503, "store unavailable\n"), "503", 20)
        assert get(port, "/healthz")[0] == 200  # the workers themselves still answer
        redis.start()
        wait_for(lambda: get(port, "/readyz")[0] == 200, "/readyz 200 again", 20)
    finally:
        serve.close()
        redis.stop()
