"""Live fuzz: hostile traffic against ``shardmq serve --workers 2`` while a good client probes.

The broker runs as a real subprocess (supervisor and two workers).
``traffic.py`` opens ``SHARDMQ_FUZZ_CONNECTIONS`` (50) concurrent connections
sending random bytes, damaged and well-formed packets of both versions, for
``SHARDMQ_FUZZ_SECONDS`` (30) in all, seeded by ``SHARDMQ_FUZZ_SEED`` (random,
printed). Meanwhile ``prober.py`` does publish/subscribe round trips at QoS 0,
1 and 2 within and across the workers, and connects fresh clients. The test
fails when:

* a round trip or a fresh connection gets no answer within 10 s, or a
  well-behaved client is disconnected;
* the broker sends bytes its own client-side decoder refuses, or a
  connection cannot be opened within 10 s;
* the supervisor or a worker has died or been replaced (the worker pids at
  the end are the ones at the start), or the broker does not stop cleanly
  on SIGTERM;
* a worker's (or the supervisor's) memory grows by more than
  ``RSS_GROWTH_LIMIT`` between two quiet points: after a warm-up third of
  the run and at the end (see below);
* the log holds a traceback, an ERROR or an unexpected WARNING.

The bugs this run has found are kept as reproducers in ``test_found_bugs.py``.

Sessions may outlive their connection by at most 2 s here
(``SHARDMQ_MAX_SESSION_EXPIRY_INTERVAL``), and topics and client ids come
from small sets, so what clients may legitimately leave behind (sessions,
retained messages, topic-tree nodes) is bounded and in place after the
warm-up; both memory samples are taken once the traffic has stopped and
those sessions have expired.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
import pytest

from tests.fuzz.prober import Prober
from tests.helpers import Client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECONDS = float(os.environ.get("SHARDMQ_FUZZ_SECONDS", "30"))
CONNECTIONS = int(os.environ.get("SHARDMQ_FUZZ_CONNECTIONS", "50"))
SEED = int(os.environ.get("SHARDMQ_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 30))))
WORKERS = 2
#: Longest a session outlives its connection, and how long the test lets them expire.
SESSION_EXPIRY_CAP = 2
SETTLE = SESSION_EXPIRY_CAP + 3.0
#: Bound on a process's RSS growth between the two quiet points. Measured on
#: this broker: 0.1 to 1.8 MB in 30 s runs, the most when a loaded machine made
#: the warm-up short (5,000 connections); 0.1 MB over 142,000 connections in a
#: 180 s run: allocator high-water marks, not a leak. 8 MB is four times the
#: worst of that. A leak of 1 KB per CONNECT adds about 5 MB per worker in the
#: 30 s run (not caught) and 15 MB in a 90 s one (caught): the bound is
#: absolute, so longer runs (SHARDMQ_FUZZ_SECONDS) find smaller leaks.
RSS_GROWTH_LIMIT = 8 * 1024 * 1024

#: WARNING records the fuzz may cause on a healthy broker.
EXPECTED_WARNINGS: tuple[str, ...] = ("disconnecting a slow consumer",)
#: ... and once the supervisor has been told to stop (workers exit one by one).
EXPECTED_AT_SHUTDOWN = ("lost shard",)

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_records(text: str) -> list[tuple[str, str]]:
    """(level, text) of each record in the broker's log, continuation lines included."""
    starts = [(m.start(), m.group(1)) for m in _RECORD.finditer(text)]
    records = []
    if starts and starts[0][0] > 0:
        records.append(("OUTPUT", text[: starts[0][0]]))  # anything printed before logging began
    for (start, level), (end, _) in zip(starts, [*starts[1:], (len(text), "")], strict=True):
        records.append((level, text[start:end]))
    return records


class FuzzBroker:
    """``shardmq serve --workers 2`` from this checkout, its log in a temporary file."""

    def __init__(self) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix=f"shardmq-fuzz-{self.port}-", suffix=".log", delete=False
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
        env["SHARDMQ_MAX_SESSION_EXPIRY_INTERVAL"] = str(SESSION_EXPIRY_CAP)
        self.env = env
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardmq",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(WORKERS),
                "--sys-interval",
                "1",
                "--log-level",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while len(self.workers()) < WORKERS or not self._accepting():
            assert self.proc.poll() is None, f"broker exited:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"broker not up:\n{self.log_text()}"
            time.sleep(0.1)
        self.worker_pids = [w.pid for w in self.workers()]

    def _accepting(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return "serving" in self.log_text() and self.log_text().count(" serving ") >= WORKERS

    def workers(self) -> list[psutil.Process]:
        try:
            return sorted(psutil.Process(self.proc.pid).children(), key=lambda p: p.pid)
        except psutil.NoSuchProcess:
            return []

    def process_names(self) -> list[str]:
        return ["supervisor"] + [f"worker {i}" for i in range(len(self.worker_pids))]

    def rss(self) -> list[int]:
        """Resident memory of the supervisor and each worker, in bytes."""
        pids = [self.proc.pid, *self.worker_pids]
        return [psutil.Process(pid).memory_info().rss for pid in pids]

    def worker_of(self, client: Client) -> int | None:
        """Which worker holds ``client``'s connection (its pid owns the accepted socket)."""
        sock = client.paho.socket()
        if sock is None:
            return None
        local = sock.getsockname()[1]
        for i, pid in enumerate(self.worker_pids):
            proc = psutil.Process(pid)
            # net_connections since psutil 6; connections before (the project allows 5.9)
            listing = getattr(proc, "net_connections", None) or proc.connections
            for conn in listing(kind="tcp"):
                ends = (conn.laddr.port if conn.laddr else 0, conn.raddr.port if conn.raddr else 0)
                if ends == (self.port, local):
                    return i
        return None

    def traffic(self, seconds: float, seed: int) -> dict[str, Any]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.fuzz.traffic",
                "--port",
                str(self.port),
                "--seconds",
                str(seconds),
                "--connections",
                str(CONNECTIONS),
                "--seed",
                str(seed),
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
        assert proc.returncode == 0, f"traffic failed:\n{proc.stdout}\n{proc.stderr}"
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def log_text(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self, keep_log: bool = False) -> None:
        self.stop()
        self.log.close()
        if keep_log:
            print(f"broker log kept: {self.log.name}")
        else:
            os.unlink(self.log.name)


def _mb(n: float) -> str:
    return f"{n / 1048576:.1f} MB"


@pytest.mark.timeout(SECONDS + 300)
def test_broker_survives_live_fuzz() -> None:
    broker = FuzzBroker()
    prober = None
    keep_log = True  # unless the test gets to its end
    try:
        prober = Prober(broker.port, timeout=10.0, worker_of=broker.worker_of, workers=WORKERS)
        prober.start()
        started_rss = broker.rss()
        warmup = max(5.0, SECONDS / 3)
        first = broker.traffic(warmup, SEED)
        time.sleep(SETTLE)
        base_rss = broker.rss()
        second = broker.traffic(SECONDS - warmup, SEED + 1)
        time.sleep(SETTLE)
        end_rss = broker.rss()
        prober.stop()
        runs = [first, second]
        print(
            f"\nlive fuzz, seed {SEED}: {SECONDS:.0f} s, {CONNECTIONS} connections\n"
            + "".join(f"  traffic: {json.dumps(r['stats'])}\n" for r in runs)
            + f"  prober: {dict(prober.rounds)}, fresh clients {prober.fresh_clients}, "
            f"slowest round {prober.slowest:.2f} s, placed on workers {prober.placed}, "
            f"failures {prober.failures}\n"
            + "".join(
                f"  {name} RSS: start {_mb(a)}, after warm-up {_mb(b)}, end {_mb(c)}\n"
                for name, a, b, c in zip(
                    broker.process_names(), started_rss, base_rss, end_rss, strict=True
                )
            )
            + f"  broker log: {broker.log.name}"
        )

        # the broker answered the fuzz with well-formed bytes and kept accepting
        for r in runs:
            assert r["findings"] == [], f"seed {SEED}: {json.dumps(r['findings'], indent=1)}"
            assert r["stats"].get("connect_failed", 0) == 0, r["connect_errors"]
        # nothing died or was replaced
        assert broker.proc.poll() is None, broker.log_text()[-5000:]
        assert [w.pid for w in broker.workers()] == broker.worker_pids
        # memory is flat between the two quiet points
        for name, before, after in zip(broker.process_names(), base_rss, end_rss, strict=True):
            assert after - before < RSS_GROWTH_LIMIT, (
                f"{name} grew {_mb(after - before)} (from {_mb(before)} to {_mb(after)}) "
                f"over {second['stats'].get('connections', 0)} connections, seed {SEED}"
            )
        # a clean stop
        assert broker.stop() == 0, broker.log_text()[-5000:]
        # nothing in the log but what a healthy broker says, or known bugs
        unexpected = []
        expected = EXPECTED_WARNINGS
        for level, text in log_records(broker.log_text()):
            if "SIGTERM received" in text:
                expected += EXPECTED_AT_SHUTDOWN
            bad = "Traceback" in text or level in ("ERROR", "CRITICAL", "OUTPUT")
            if bad or (level == "WARNING" and not any(w in text for w in expected)):
                unexpected.append(text)
        assert unexpected == [], f"seed {SEED}:\n" + "".join(unexpected[:10])
        # the good client was answered all along
        for qos in range(3):
            assert any(k.startswith(f"qos{qos} ") for k in prober.rounds), prober.rounds
        assert not prober.failures, f"seed {SEED}: {prober.failures}"
        keep_log = False
    finally:
        if prober is not None:
            prober.stop()
        broker.close(keep_log)
