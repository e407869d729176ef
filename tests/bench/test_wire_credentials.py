"""bench.load's --username/--password: the CONNECT it writes carries them,
and a broker with a password file admits the generator's clients."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import wire
from shardmq.auth.passwd import PasswordFile
from shardmq.protocol.codec import Decoder
from tests.helpers import BrokerThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("protocol", [5, 4])
def test_connect_carries_username_and_password(protocol: int) -> None:
    data = wire.connect("c1", protocol, 60, username="alice", password="wonderland")
    (packet,) = Decoder(server=True).feed(data)
    assert (packet.client_id, packet.username, packet.password) == ("c1", "alice", b"wonderland")
    (plain,) = Decoder(server=True).feed(wire.connect("c2", protocol, 60))
    assert plain.username is None and plain.password is None


@pytest.mark.timeout(60)
def test_conn_logs_in_with_a_password_file(
    make_broker: Callable[..., BrokerThread], tmp_path: Path
) -> None:
    pw = PasswordFile()
    pw.set("bench", "pw")
    pw.save(tmp_path / "passwd")
    bt = make_broker(password_file=str(tmp_path / "passwd"))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", "conn", "--port", str(bt.port), "-n", "20",
         "--hold", "0", "--procs", "1", "--username", "bench", "--password", "pw", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["connected"] == 20 and result["errors"] == 0
