"""README's "Authentication and access control" examples, run as written:
each ``sh`` block line by line in a shell (``shardmq serve`` lines in the
background), with only the ports changed to free ones. A ``# ...`` comment
after a command is output it must print; one in parentheses is prose."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardmq.config import load_config
from tests.auth.mosquitto import tool
from tests.redis_server import RedisServer, redis_server_path
from tests.storage.serve import free_port, kill_tree

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(
    tool("mosquitto_pub") is None or tool("mosquitto_sub") is None,
    reason="mosquitto-clients is not installed",
)


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Authentication and access control")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


def commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines promised after it); a heredoc stays with
    its command."""
    out: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        heredoc = re.search(r"<<'(\w+)'", line)
        if heredoc:
            while lines[i] != heredoc.group(1):
                line += "\n" + lines[i]
                i += 1
            line += "\n" + lines[i]
            i += 1
        expected = []
        while i < len(lines) and lines[i].startswith("# "):
            note = lines[i][2:]
            if not note.startswith("("):
                expected.append(note)
            i += 1
        out.append((line, expected))
    return out


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """`shardmq` on PATH as this checkout's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "shardmq"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m shardmq "$@"\n')
    wrapper.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if redis_server_path() is None:
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def run_block(block: str, cwd: Path, env: dict[str, str], ports: dict[str, str]) -> None:
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for command, expected in commands(block):
            for old, new in ports.items():
                command = command.replace(old, new)
            if command.startswith("shardmq serve"):
                servers.append(
                    subprocess.Popen(
                        command,
                        shell=True,
                        cwd=cwd,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_listening(int(ports["1884"]), servers[-1])
                continue
            proc = subprocess.run(
                command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=30
            )
            printed = proc.stdout + proc.stderr
            for line in expected:
                assert line in printed, (command, printed)
            if not expected:
                assert proc.returncode == 0, (command, printed)
    finally:
        for server in servers:
            kill_tree(server.pid)
            server.wait(10)


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, "shardmq serve exited"
            assert time.monotonic() < deadline, "shardmq serve did not listen"
            time.sleep(0.05)


def test_password_file_and_acl_examples(tmp_path: Path, shell_env: dict[str, str]) -> None:
    files, clients = blocks("sh")[:2]
    ports = {"1884": str(free_port())}
    # the server block starts the broker; the clients' block runs while it serves
    run_block(files + clients, tmp_path, shell_env, ports)
    assert (tmp_path / "passwd").read_text().startswith("alice:$7$101$")


def test_redis_example(tmp_path: Path, shell_env: dict[str, str], redis: RedisServer) -> None:
    block = blocks("sh")[2]
    assert "redis-cli" in block
    if tool("redis-cli") is None:
        pytest.skip("redis-cli not installed")
    ports = {"1884": str(free_port()), "6379": str(redis.port)}
    run_block(block, tmp_path, shell_env, ports)
    assert redis.client().hget("mqtt_acl:carol", "carol/#") == b"all"


def test_toml_example_loads(tmp_path: Path) -> None:
    (toml,) = blocks("toml")
    (tmp_path / "passwd").write_text("")
    (tmp_path / "acl").write_text("topic read #\n")
    path = tmp_path / "shardmq.toml"
    path.write_text(toml.replace("/etc/shardmq/", f"{tmp_path}/"))
    config = load_config(config_file=path, env={})
    assert config.password_file == f"{tmp_path}/passwd"
    assert config.allow_anonymous is False
