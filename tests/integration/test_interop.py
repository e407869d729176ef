"""Interoperability: Debian's libmosquitto clients against the broker, and the
``shardmq serve`` command as a real process.

libmosquitto is stricter than paho on several points (for example it refuses
an Assigned Client Identifier it did not ask for), so these catch mistakes a
paho-only suite would not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import BrokerThread, Client, wait_for

ClientFactory = Callable[..., Client]

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
needs_mosquitto = pytest.mark.skipif(
    not (MOSQUITTO_PUB and MOSQUITTO_SUB), reason="mosquitto-clients not installed"
)

TIMEOUT = 10.0


def _cli_version(version: int) -> str:
    return "5" if version == 5 else "311"


def _has_subscription(bt: BrokerThread, client_id: str) -> bool:
    """Read-only look at the broker: has ``client_id`` subscribed yet?"""

    def check() -> bool:
        shard = bt.broker._shard
        session = shard.sessions.get(client_id) if shard is not None else None
        return bool(session is not None and session.subscriptions)

    return bool(bt.call(check))


def _start_sub(bt: BrokerThread, version: int, client_id: str, *args: str) -> subprocess.Popen[str]:
    assert MOSQUITTO_SUB is not None
    cmd = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(bt.port), "-V", _cli_version(version)]
    cmd += ["-i", client_id, "-W", str(int(TIMEOUT)), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or _has_subscription(bt, client_id))
    except AssertionError:
        proc.kill()
        proc.communicate()
        raise
    return proc


def _finish(proc: subprocess.Popen[str]) -> list[str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"mosquitto_sub did not finish: {out!r} {err!r}") from None
    assert proc.returncode == 0, (proc.returncode, out, err)
    return out.splitlines()


def _pub(bt: BrokerThread, version: int, *args: str) -> None:
    assert MOSQUITTO_PUB is not None
    cmd = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(bt.port), "-V", _cli_version(version)]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)


# -- mosquitto_pub / mosquitto_sub ---------------------------------------------------------


@needs_mosquitto
def test_mosquitto_clients_qos_0_1_2(broker: BrokerThread, version: int) -> None:
    """mosquitto_pub at QoS 0, 1, 2 -> mosquitto_sub (granted QoS 2) gets each at its QoS."""
    sub = _start_sub(
        broker, version, f"msub-q-{version}", "-t", "io/ql", "-q", "2", "-C", "3", "-F", "%q %p"
    )
    for qos in (0, 1, 2):
        _pub(broker, version, "-t", "io/ql", "-q", str(qos), "-m", f"m{qos}")
    assert _finish(sub) == ["0 m0", "1 m1", "2 m2"]


@needs_mosquitto
def test_mosquitto_clients_retained(broker: BrokerThread, version: int) -> None:
    _pub(broker, version, "-t", "io/r", "-q", "1", "-r", "-m", "kept")
    assert MOSQUITTO_SUB is not None
    proc = subprocess.run(
        [
            MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(broker.port), "-V", _cli_version(version),
            "-t", "io/r", "-C", "1", "-W", str(int(TIMEOUT)), "-F", "%r %p",
        ],
        capture_output=True, text=True, timeout=TIMEOUT + 5, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == ["1 kept"]


@needs_mosquitto
def test_mosquitto_client_with_explicit_id_connects(
    broker: BrokerThread, clients: ClientFactory, version: int
) -> None:
    """No Assigned Client Identifier when the client chose its own id [MQTT-3.2.2-16];
    libmosquitto treats an unrequested one as a protocol error."""
    sub = clients(broker.port, version=version)
    sub.connect()
    sub.subscribe("io/id", qos=1)
    _pub(broker, version, "-i", "chosen-id", "-t", "io/id", "-q", "1", "-m", "hello")
    assert sub.get().payload == b"hello"


# -- shardmq serve as a process --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("SHARDMQ_")}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardmq", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: proc.poll() is not None or _accepting(port), timeout=TIMEOUT)
        assert proc.poll() is None, proc.communicate()[0]
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_serve_accepts_clients_and_stops_on_sigterm(
    served: tuple[subprocess.Popen[bytes], int], clients: ClientFactory
) -> None:
    proc, port = served
    v5 = clients(port, version=5)
    v5.connect()
    v311 = clients(port, version=4)
    v311.connect()
    v311.subscribe("serve/t", qos=1)
    v5.publish("serve/t", b"through the process", qos=1)
    assert v311.get().payload == b"through the process"

    proc.send_signal(signal.SIGTERM)
    rc, _props = v5.wait_disconnect(timeout=TIMEOUT)
    assert int(rc.value) == 0x8B
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("shardmq serve did not exit after SIGTERM") from None
    assert proc.returncode == 0, output.decode(errors="replace")
