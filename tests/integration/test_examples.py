"""The examples, run for real: ``python -m shardmq serve --app ...`` and
``python examples/embedded.py`` as subprocesses, paho clients over TCP."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardmq.protocol.constants import ReasonCode
from tests.helpers import WAIT, Client

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"shardmq listening on [^\s:]+:(\d+)")


class Server:
    """``python -m shardmq serve`` in a subprocess, on a free port."""

    def __init__(self, app: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardmq",
                "serve",
                "--app",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--sys-interval",
                "0",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_port()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_port(self) -> int:
        while True:
            try:
                line = self.lines.get(timeout=WAIT * 2)
            except queue.Empty:
                raise AssertionError(f"no 'listening' line; log so far: {self.log}") from None
            if line is None:
                raise AssertionError(f"shardmq exited: {''.join(self.log)}")
            self.log.append(line)
            m = LISTENING.search(line)
            if m:
                return int(m.group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(WAIT * 2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return rc


@pytest.fixture
def serve() -> Iterator[Callable[[str], Server]]:
    started: list[Server] = []

    def factory(app: str) -> Server:
        server = Server(app)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.mark.parametrize("attr", ["setup", "app"])
def test_auth_app(
    serve: Callable[[str], Server], clients: Callable[..., Client], version: int, attr: str
) -> None:
    server = serve(f"examples.auth_app:{attr}")
    good = clients(server.port, version=version, username="alice", password="wonderland")
    good.connect()
    good.subscribe("hello", qos=1)
    good.publish("hello", b"hi", qos=1)
    assert good.get().payload == b"hi"

    for user, password in [("alice", "guess"), ("mallory", "wonderland"), ("alice", None)]:
        bad = clients(server.port, version=version, username=user, password=password)
        _, rc, props = bad.connect(expect_success=False)
        assert rc.value == ReasonCode.BAD_USER_NAME_OR_PASSWORD, (user, password, rc)
        if version == 5:
            assert "wrong password" in props.ReasonString
        bad.paho.loop_stop()
    anonymous = clients(server.port, version=version)
    _, rc, _ = anonymous.connect(expect_success=False)
    assert rc.value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    anonymous.paho.loop_stop()
    good.disconnect()
    # SIGTERM: a graceful stop, exit status 0
    assert server.stop() == 0


def test_topic_acl_app(serve: Callable[[str], Server], clients: Callable[..., Client]) -> None:
    server = serve("examples.topic_acl_app:setup")
    alice = clients(server.port, username="alice")
    alice.connect()
    bob = clients(server.port, username="bob")
    bob.connect()

    # subscribe: alice may read all sensors, bob only his own
    assert [rc.value for rc in alice.subscribe("sensors/#", qos=1)] == [1]
    codes = bob.subscribe([("sensors/bob/#", 1), ("sensors/#", 1), ("alerts/fire", 0)])
    assert [rc.value for rc in codes] == [1, ReasonCode.NOT_AUTHORIZED, 0]

    # publish: bob may write under sensors/bob/ only
    rc = bob.publish("sensors/alice/temp", b"forged", qos=1)
    assert rc.value == ReasonCode.NOT_AUTHORIZED
    bob.publish("sensors/alice/temp", b"forged-qos0", qos=0)
    rc = bob.publish("sensors/bob/temp", b"21", qos=1)
    assert not rc.is_failure
    msg = alice.get()
    # the refused messages were sent first; had either got through it would be here
    assert (msg.topic, msg.payload) == ("sensors/bob/temp", b"21")

    # a user without an ACL entry cannot connect at all
    stranger = clients(server.port, username="mallory")
    _, rc, _ = stranger.connect(expect_success=False)
    assert rc.value == ReasonCode.NOT_AUTHORIZED
    stranger.paho.loop_stop()


def test_topic_acl_app_v311(serve: Callable[[str], Server], clients: Callable[..., Client]) -> None:
    server = serve("examples.topic_acl_app:setup")
    bob = clients(server.port, version=4, username="bob")
    bob.connect()
    codes = bob.subscribe([("sensors/#", 1), ("sensors/bob/x", 1)])
    assert [rc.value for rc in codes] == [0x80, 1]


def test_acl_covers() -> None:
    from examples.topic_acl_app import covers

    assert covers("sensors/#", "sensors/a/temp")
    assert covers("sensors/#", "sensors")
    assert covers("sensors/#", "sensors/+/temp")
    assert covers("sensors/+", "sensors/a")
    assert not covers("sensors/+", "sensors/#")
    assert not covers("sensors/+", "sensors/a/b")
    assert not covers("sensors/bob/#", "sensors/#")
    assert not covers("#", "$SYS/broker/uptime")
    assert not covers("alerts/+", "alerts")


def test_embedded_example() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedded.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "received greetings/world: hello from the program" in proc.stdout
    assert "connected" in proc.stdout
