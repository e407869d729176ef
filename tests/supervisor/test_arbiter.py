"""The supervisor with real processes: a subprocess runs ``supervised.py``,
whose workers answer each TCP connection with a JSON line about themselves.

No assertion is about durations: waits are bounded numbers of attempts, and
the only clocks are the supervisor's own timeouts, set short.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
CPUS = sorted(os.sched_getaffinity(0))


class Running:
    """A supervisor subprocess (in its own session) and its log file."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, ports: list[int]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ports = ports
        self.port = ports[0]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern``, polling the log (bounded)."""
        for _ in range(200):
            found = list(re.finditer(pattern, self.log()))
            if len(found) >= count:
                return found[:count]
            time.sleep(0.04)
        raise AssertionError(f"{pattern!r} x{count} not in log:\n{self.log()}")

    def started_pids(self, count: int) -> dict[int, int]:
        """worker id -> pid of the first ``count`` worker starts."""
        found = self.wait_log(r"worker (\d+) \(pid (\d+)\) started", count)
        return {int(m[1]): int(m[2]) for m in found}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDMQ_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        log_path = tmp_path / f"supervisor{len(started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.supervisor.supervised", *args],
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, log_path.read_text()
        running = Running(proc, log_path, json.loads(line))
        started.append(running)
        return running

    yield start
    for running in started:
        proc = running.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left in the session, workers included
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def ask(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """Connect and read the worker's one-line JSON self-description."""
    with socket.create_connection((host, port), timeout=8) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


def ask_until(
    port: int, accept: Callable[[dict[str, Any]], bool], attempts: int = 300
) -> dict[str, Any]:
    """Ask until ``accept`` likes an answer. A connection that a dying worker
    had accepted but not answered ends empty or reset: that counts as a miss."""
    for _ in range(attempts):
        try:
            answer = ask(port)
        except (ConnectionError, json.JSONDecodeError):
            answer = None
        if answer is not None and accept(answer):
            return answer
        time.sleep(0.01)
    raise AssertionError("no worker gave the expected answer")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- accepting ---------------------------------------------------------------------


def test_workers_share_the_port(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "2")
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(300):
        answer = ask(sup.port)
        seen[answer["worker"]] = answer
        if len(seen) == 2:
            break
    assert set(seen) == {0, 1}
    for answer in seen.values():
        assert answer["port"] == sup.port  # port 0 resolved once for the group
        assert answer["workers"] == 2
        assert answer["generation"] == 1
        assert answer["affinity"] == CPUS  # not pinned by default
    assert sup.stop() == 0


def test_several_listeners_and_ipv6(supervisor: Callable[..., Running]) -> None:
    if not socket.has_ipv6 or not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    sup = supervisor("--workers", "2", "--host", "127.0.0.1", "--host", "::1")
    assert len(sup.ports) == 2
    assert ask(sup.ports[0])["listeners"] == 2
    assert ask(sup.ports[1], host="::1")["listeners"] == 2
    assert sup.stop() == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_pin_sets_each_workers_affinity(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "2", "--pin")
    seen: dict[int, list[int]] = {}
    for _ in range(300):
        answer = ask(sup.port)
        seen[answer["worker"]] = answer["affinity"]
        if len(seen) == 2:
            break
    assert seen == {worker: [CPUS[worker % len(CPUS)]] for worker in (0, 1)}
    assert sup.stop() == 0


# -- restarts ------------------------------------------------------------------------


def test_killed_worker_is_restarted(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "2")
    old = sup.started_pids(2)[0]
    os.kill(old, signal.SIGKILL)
    answer = ask_until(sup.port, lambda a: a["worker"] == 0 and a["pid"] != old)
    assert answer["generation"] == 2
    # the supervisor logs the start after fork() returns in the parent, so
    # the new worker may answer before that line is written: wait for it
    started = f"worker 0 (pid {answer['pid']}) started (generation 2)"
    wait_for(lambda: started in sup.log())
    log = sup.log()
    assert f"worker 0 (pid {old}) died: killed by SIGKILL; restarting in" in log
    assert sup.stop() == 0


def test_quick_deaths_back_off(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "1")
    delays = []
    for generation in (1, 2, 3):
        pid = int(sup.wait_log(r"worker 0 \(pid (\d+)\) started", generation)[-1][1])
        os.kill(pid, signal.SIGKILL)
        found = sup.wait_log(
            rf"worker 0 \(pid {pid}\) died: killed by SIGKILL; restarting in (\S+)s"
        )
        delays.append(found[0][1])
    assert delays == ["0.1", "0.2", "0.4"]  # doubling: none lived 10 s
    assert ask(sup.port)["generation"] == 4
    assert sup.stop() == 0


def test_stuck_event_loop_is_killed_and_restarted(supervisor: Callable[..., Running]) -> None:
    # Worker 0's first generation blocks its loop; its SIGTERM handler cannot
    # run, so the supervisor has to escalate to SIGKILL.
    sup = supervisor("--workers", "1", "--mode", "stuck", "--heartbeat-timeout", "1")
    old = sup.started_pids(1)[0]
    answer = ask_until(sup.port, lambda a: a["generation"] == 2, attempts=50)
    assert answer["pid"] != old
    log = sup.log()
    assert f"worker 0 (pid {old}) sent no heartbeat for" in log
    assert f"worker 0 (pid {old}) still alive 2s after SIGTERM; sending SIGKILL" in log
    assert f"worker 0 (pid {old}) died after its heartbeat stopped: killed by SIGKILL" in log
    assert sup.stop() == 0


def test_crash_after_boot_is_restarted(supervisor: Callable[..., Running]) -> None:
    # An exception after the first heartbeat is a crash (EXIT_CRASH), worth a
    # restart; only one before it is a boot failure that stops everything.
    sup = supervisor("--workers", "1", "--mode", "crash")
    old = sup.started_pids(1)[0]
    answer = ask_until(sup.port, lambda a: a["generation"] == 2)
    log = sup.log()
    assert f"worker 0 (pid {old}) crashed" in log
    assert "RuntimeError: crashed: test worker" in log
    assert f"worker 0 (pid {old}) died: exited with code 1 (crash); restarting" in log
    assert answer["pid"] != old
    assert sup.stop() == 0


def test_sighup_is_forwarded(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "1")
    pid = sup.started_pids(1)[0]
    ask(sup.port)  # the worker's handlers are installed once it answers
    sup.proc.send_signal(signal.SIGHUP)
    answer = ask_until(sup.port, lambda a: a["hups"] >= 1)
    assert answer["pid"] == pid  # forwarded, not restarted
    assert sup.stop() == 0


# -- exits ---------------------------------------------------------------------------


def test_config_exit_stops_the_supervisor(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "2", "--mode", "config")
    assert sup.proc.wait(timeout=9) == 3
    log = sup.log()
    assert len(re.findall(r"worker 1 \(pid \d+\) started", log)) == 1  # never respawned
    assert re.search(
        r"worker 1 \(pid \d+\) exited with code 3 \(config error\); not restarting", log
    )
    assert re.search(r"worker 0 \(pid \d+\) stopped", log)


def test_boot_failure_stops_the_supervisor(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "2", "--mode", "boot")
    assert sup.proc.wait(timeout=9) == 4
    log = sup.log()
    assert re.search(r"worker 1 \(pid \d+\) failed to boot", log)
    assert "RuntimeError: cannot boot: test worker" in log  # the traceback
    assert len(re.findall(r"worker 1 \(pid \d+\) started", log)) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_stops_every_worker(
    supervisor: Callable[..., Running], sig: signal.Signals
) -> None:
    sup = supervisor("--workers", "2", "--shutdown-timeout", "5")
    pids = sup.started_pids(2)
    run_dir = ask(sup.port)["run_dir"]
    assert os.path.isdir(run_dir)
    sup.proc.send_signal(sig)
    assert sup.proc.wait(timeout=9) == 0
    assert not any(alive(pid) for pid in pids.values())
    assert not os.path.exists(run_dir)
    log = sup.log()
    for worker, pid in pids.items():
        assert f"worker {worker} (pid {pid}) stopped: exited with code 0" in log
    assert "SIGKILL" not in log


def test_workers_stop_when_the_supervisor_dies(supervisor: Callable[..., Running]) -> None:
    sup = supervisor("--workers", "2")
    pids = sup.started_pids(2)
    ask(sup.port)
    sup.proc.kill()
    sup.proc.wait(timeout=5)
    for _ in range(200):  # each worker notices at its next heartbeat
        if not any(alive(pid) for pid in pids.values()):
            break
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids.values())
