"""Password files across implementations: mosquitto_passwd's read by us, ours
read by a real mosquitto broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardmq.auth.passwd import PasswordFile
from tests.auth.mosquitto import DEADLINE, Mosquitto, tool

ROOT = Path(__file__).resolve().parents[2]

needs_passwd = pytest.mark.skipif(
    tool("mosquitto_passwd") is None, reason="mosquitto_passwd not installed (Debian: mosquitto)"
)
needs_broker = pytest.mark.skipif(
    tool("mosquitto") is None or tool("mosquitto_pub") is None,
    reason="mosquitto and mosquitto_pub not installed (Debian: mosquitto, mosquitto-clients)",
)


def mosquitto_passwd(*args: str) -> None:
    exe = tool("mosquitto_passwd")
    assert exe is not None
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr


def shardmq_passwd(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shardmq", "passwd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr


@needs_passwd
def test_mosquitto_passwd_files_verify_with_ours(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(path), "alice", "right")
    mosquitto_passwd("-b", str(path), "bob", "pässwörd mit Leerzeichen")
    mosquitto_passwd("-H", "sha512", "-b", str(path), "carol", "old-style")
    mosquitto_passwd("-b", str(path), "dave", "d")
    mosquitto_passwd("-D", str(path), "dave")

    entries = PasswordFile.load(path)
    assert entries.users() == ["alice", "bob", "carol"]
    assert entries.get("carol") is not None and entries.get("carol").iterations is None  # type: ignore[union-attr]
    assert entries.verify("alice", "right")
    assert entries.verify("bob", "pässwörd mit Leerzeichen")
    assert entries.verify("carol", "old-style")
    assert not entries.verify("alice", "wrong")
    assert not entries.verify("bob", "pässwörd")
    assert not entries.verify("carol", "right")
    assert not entries.verify("dave", "d")


@needs_passwd
def test_mosquitto_passwd_edits_our_file(tmp_path: Path) -> None:
    """mosquitto_passwd can update a file we wrote, and we read its result."""
    path = tmp_path / "passwd"
    shardmq_passwd("-c", "-b", str(path), "alice", "one")
    shardmq_passwd("-b", str(path), "bob", "two")
    mosquitto_passwd("-b", str(path), "alice", "changed")
    mosquitto_passwd("-D", str(path), "bob")
    entries = PasswordFile.load(path)
    assert entries.users() == ["alice"]
    assert entries.verify("alice", "changed")


@pytest.fixture(scope="module")
def broker_with_our_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    directory = tmp_path_factory.mktemp("mosquitto-passwd")
    path = directory / "passwd"
    shardmq_passwd("-c", "-b", str(path), "alice", "right")
    path.write_text("# users of the test broker\n" + path.read_text())
    shardmq_passwd("-b", str(path), "bob", "ünïcödé pw")
    # an entry with another iteration count; the comment survives save()
    entries = PasswordFile.load(path)
    entries.set("carol", "slow", iterations=5000)
    entries.save(path)
    assert path.read_text().startswith("# users of the test broker\nalice:$7$101$")
    broker = Mosquitto(directory, "allow_anonymous false", f"password_file {path}").start()
    yield broker
    broker.stop()


def mosquitto_pub(port: int, *credentials: str) -> subprocess.CompletedProcess[str]:
    exe = tool("mosquitto_pub")
    assert exe is not None
    return subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(port), *credentials, "-t", "t", "-m", "x"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
    )


@needs_broker
@pytest.mark.parametrize(
    ("credentials", "accepted"),
    [
        (("-u", "alice", "-P", "right"), True),
        (("-u", "alice", "-P", "wrong"), False),
        (("-u", "alice", "-P", "right "), False),
        (("-u", "bob", "-P", "ünïcödé pw"), True),
        (("-u", "carol", "-P", "slow"), True),
        (("-u", "carol", "-P", "right"), False),
        (("-u", "mallory", "-P", "right"), False),
        ((), False),  # anonymous, refused by allow_anonymous false
    ],
)
def test_mosquitto_accepts_our_file(
    broker_with_our_file: Mosquitto, credentials: tuple[str, ...], accepted: bool
) -> None:
    proc = mosquitto_pub(broker_with_our_file.port, *credentials)
    if accepted:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 5, (proc.returncode, proc.stderr)  # CONNACK 5: not authorised
        assert "not authorised" in proc.stderr
