"""Packaging: the wheel that ``python -m build`` makes installs into a fresh
venv, and the installed ``shardmq`` runs (``--version``, ``serve`` answering a
real MQTT client). The Grafana example only uses the broker's metric names.

The wheel is built from the repository's files as they are now, copied
outside the tree so a stale ``build/`` never leaks into it; the venv reuses
this interpreter's site-packages for the dependencies (no network), while
shardmq itself comes only from the wheel (the check below proves it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.helpers import Client

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "shardmq-dashboard.json"

METRICS = {
    "shardmq_connections",
    "shardmq_connections_total",
    "shardmq_messages_received_total",
    "shardmq_messages_sent_total",
    "shardmq_bytes_received_total",
    "shardmq_bytes_sent_total",
    "shardmq_messages_dropped_total",
    "shardmq_subscriptions",
    "shardmq_retained_messages",
    "shardmq_sessions",
    "shardmq_queued_messages",
    "shardmq_auth_failures_total",
    "shardmq_delivery_latency_seconds",
    "shardmq_listener_connections",
    "shardmq_worker_cpu_seconds_total",
    "shardmq_worker_resident_memory_bytes",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_grafana_dashboard_uses_only_broker_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = dash["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    assert exprs
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bshardmq_\w+", expr):
            # histogram series: <name>_bucket / _sum / _count
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used <= METRICS, used - METRICS
    assert used == METRICS  # every metric has a panel


@pytest.mark.timeout(180)
def test_wheel_builds_installs_and_serves(tmp_path: Path) -> None:
    pytest.importorskip("build")
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"
        ),
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = dist.glob("shardmq-*.whl")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        check=True,
        timeout=60,
    )
    py = venv / "bin" / "python"
    # run from a venv, --system-site-packages reaches the base interpreter's
    # packages, not this one's: add this one's too (after the venv's own, and
    # as plain paths, so no .pth of theirs, an editable shardmq's included, runs)
    site_dir = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site_dir) / "_test_parent.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SHARDMQ")}
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import shardmq, shardmq.worker.main, shardmq.cluster.local; print(shardmq.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # from the wheel, not the checkout
    exe = str(venv / "bin" / "shardmq")
    version = subprocess.run(
        [exe, "--version"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert version.startswith("shardmq ")

    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--sys-interval",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "installed broker never listened"
                time.sleep(0.1)
        sub, pub = Client(port), Client(port)
        sub.connect()
        pub.connect()
        try:
            sub.subscribe("pkg/t", qos=1)
            pub.publish("pkg/t", b"from the wheel", qos=1)
            assert sub.get().payload == b"from the wheel"
        finally:
            sub.disconnect()
            pub.disconnect()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
