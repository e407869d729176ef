"""The memory store's snapshot: what a SIGTERM (or an autosave before kill -9)
keeps, through a real `shardmq serve` restarted on the same port, with real
clients. One worker and two."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from shardmq.protocol.packets import (
    Connack,
    Connect,
    Properties,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from tests.helpers import Client, wait_for
from tests.storage.serve import (
    ROOT,
    Raw,
    Serve,
    check_inbound_qos2_kept,
    check_session,
    fill_session,
    persistent,
)


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return tmp_path / "state.snapshot"


@pytest.mark.parametrize("workers", [1, 2])
def test_sessions_queue_and_retained_survive_sigterm(
    snapshot: Path, brokers: list[Serve], version: int, workers: int
) -> None:
    """A persistent session's subscriptions and its queued QoS 1/2 messages, and
    the retained messages, are back after SIGTERM and a restart."""
    b = Serve(snapshot, workers).start()
    brokers.append(b)
    fill_session(b.port, version)
    assert b.stop() == 0
    assert snapshot.exists() or Path(f"{snapshot}.0").exists()

    b.start()
    check_session(b.port, version)


def test_unacknowledged_and_inbound_qos2_survive_sigterm(
    snapshot: Path, brokers: list[Serve], version: int
) -> None:
    """An outbound QoS 1 message sent but not acknowledged is resent with DUP
    after the restart, and an inbound QoS 2 PUBLISH acknowledged with PUBREC
    but not yet released is not routed a second time when resent."""
    b = Serve(snapshot).start()
    brokers.append(b)
    sub = Raw(b.port, version)
    sub.connect("s1")
    sub.send(Subscribe(1, [Subscription("q/#", 2)]))
    assert isinstance(sub.recv(), Suback)
    pub = Raw(b.port, version)
    pub.connect("p1")
    pub.send(Publish("q/1", b"once", qos=2, packet_id=7))
    assert isinstance(pub.recv(), Pubrec)  # no PUBREL yet
    first = sub.recv()
    assert isinstance(first, Publish) and first.payload == b"once"  # not acknowledged
    sub.close()
    pub.close()
    assert b.stop() == 0

    b.start()
    sub = Raw(b.port, version)
    assert sub.connect("s1").session_present is True
    resent = sub.recv()
    assert isinstance(resent, Publish)
    assert (resent.packet_id, resent.payload, resent.dup) == (first.packet_id, b"once", True)
    sub.send(Pubrec(resent.packet_id))
    assert isinstance(sub.recv(), Pubrel)
    sub.send(Pubcomp(resent.packet_id))
    check_inbound_qos2_kept(b.port, version, sub, "q/2")


def test_expiry_and_will_delay_that_pass_while_down_are_honoured(
    snapshot: Path, brokers: list[Serve]
) -> None:
    """Deadlines are absolute times: a session whose expiry (2 s) passes while the
    broker is down is gone at start, and its will, whose delay (1 s) passed
    too, is published then (to a persistent watcher, queued for it)."""
    b = Serve(snapshot).start()
    brokers.append(b)
    watcher = persistent(b.port, "watcher", 5)
    watcher.connect()
    watcher.subscribe("will/#", qos=1)
    watcher.disconnect()
    owner = Raw(b.port)
    will = Will("will/t", b"gone while down", 1, properties=Properties(will_delay_interval=1))
    owner.send(
        Connect(
            "short", clean_start=False, will=will, properties=Properties(session_expiry_interval=2)
        )
    )
    assert isinstance(owner.recv(), Connack)
    owner.send(Subscribe(1, [Subscription("short/t", 1)]))
    assert isinstance(owner.recv(), Suback)
    assert b.stop() == 0  # the connection is still open: SIGTERM ends it
    time.sleep(2.5)  # both deadlines pass while the broker is down
    b.start()
    watcher = persistent(b.port, "watcher", 5)
    watcher.connect()
    assert watcher.get().payload == b"gone while down"
    back = Client(b.port, client_id="short", clean_start=False, session_expiry=60)
    flags, _, _ = back.connect()
    assert flags.session_present is False
    back.disconnect()
    watcher.disconnect()


def test_autosave_survives_kill_9(snapshot: Path, brokers: list[Serve]) -> None:
    """With autosave_interval, a snapshot is written while the broker runs: after
    kill -9 of every broker process, what was saved is back."""
    b = Serve(snapshot, 1, "--autosave-interval", "0.2").start()
    brokers.append(b)
    sub = persistent(b.port, "ks", 5)
    sub.connect()
    sub.subscribe("k/#", qos=1)
    sub.disconnect()
    pub = Client(b.port)
    pub.connect()
    pub.publish("k/1", b"saved", qos=1)
    pub.disconnect()
    wait_for(lambda: "snapshot" in b.log_text() and "1 sessions" in b.log_text(), timeout=10)
    # one more autosave after the message was queued
    marker = b.log_text().count("snapshot ")
    wait_for(lambda: b.log_text().count("snapshot ") > marker, timeout=10)
    b.stop(signal.SIGKILL)
    b.start()
    again = persistent(b.port, "ks", 5)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    assert again.get().payload == b"saved"
    again.disconnect()


@pytest.mark.parametrize(
    "content",
    [b"not a snapshot", b"", None],
    ids=["garbage", "empty", "truncated"],
)
def test_unusable_snapshot_stops_the_broker(
    snapshot: Path, brokers: list[Serve], content: bytes | None
) -> None:
    """A corrupt or truncated snapshot stops `shardmq serve` with one line naming
    the file: it never starts silently empty."""
    if content is None:
        b = Serve(snapshot).start()
        brokers.append(b)
        c = persistent(b.port, "t", 5)
        c.connect()
        c.subscribe("t", 1)
        c.disconnect()
        assert b.stop() == 0
        data = snapshot.read_bytes()
        snapshot.write_bytes(data[: len(data) // 2])
    else:
        snapshot.write_bytes(content)
    proc = subprocess.run(
        Serve(snapshot).argv(), cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "persistence_file" in lines[0] and str(snapshot) in lines[0], lines[0]
