"""Smoke test of the load generator (bench/load.py) against a private Mosquitto.

Counts are tiny and nothing is timed: this only proves the generator connects, publishes,
receives, accounts for every message and prints its one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.brokers import MOSQUITTO, Mosquitto

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto not installed")


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto() as broker:
        yield broker


def run_load(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", *args, "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.timeout(30)
def test_pubsub_qos1_delivers_everything_once(mosquitto: Mosquitto) -> None:
    result = run_load(
        "pubsub",
        "--port", str(mosquitto.port),
        "--pubs", "2",
        "--subs", "2",
        "--qos", "1",
        "--duration", "2",
        "--warmup", "0.5",
        "--rate", "2000",
        "--procs", "1",
        "--broker-pid", str(mosquitto.pid),
    )  # fmt: skip
    assert result["delivered"] > 0
    assert result["lost"] == 0
    assert result["dup"] == 0
    assert result["errors"] == 0
    assert result["latency_us"]["count"] > 0
    # CPU per delivered message: Mosquitto did work for each of them
    assert result["broker_cpu"]["us_per_op"] > 0
    assert result["generator_cpu"]["us_per_op"] > 0


@pytest.mark.timeout(30)
def test_conn_opens_and_holds(mosquitto: Mosquitto) -> None:
    result = run_load(
        "conn",
        "--port", str(mosquitto.port),
        "-n", "50",
        "--hold", "0.5",
        "--procs", "1",
        "--broker-pid", str(mosquitto.pid),
    )  # fmt: skip
    assert result["connected"] == 50
    assert result["held"] == 50
    assert result["errors"] == 0
    assert result["broker_bytes_per_conn"] is not None
