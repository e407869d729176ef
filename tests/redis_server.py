"""A real redis-server on a free loopback port, for the tests that need one.

It appends every write to its AOF and fsyncs it (``appendfsync always``), so
a Redis stopped (or killed) and started again on the same port and directory
has everything it acknowledged.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.brokers import free_cluster_port


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server(port: int, directory: Path, extra: list[str] | None = None) -> Any:
    """A redis-server on 127.0.0.1:``port`` keeping its files in ``directory``,
    every write appended and fsynced (``appendfsync always``)."""
    exe = redis_server_path()
    assert exe is not None, "redis-server is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    argv += [*(extra or []), "--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    argv += ["--daemonize", "no", "--logfile", str(directory / "redis.log")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = _redis_server(self.port, self.directory)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client().ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        """Stop it (SIGKILL: what it fsynced is kept)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class RedisClusterServer:
    """A real Redis Cluster of three primaries (no replicas) on free loopback
    ports: ``redis-server --cluster-enabled yes`` three times, then
    ``redis-cli --cluster create``. Stopped and started again on the same
    ports and directories, it forms the same cluster with what it fsynced."""

    def __init__(self, directory: Path, primaries: int = 3) -> None:
        self.directory = directory
        self.ports = [free_cluster_port() for _ in range(primaries)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created = False

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisClusterServer:
        for port in self.ports:
            cluster = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            cluster += ["--cluster-node-timeout", "2000"]
            self.procs.append(_redis_server(port, self.directory / str(port), cluster))
        deadline = time.monotonic() + 15
        for port in self.ports:
            self._wait(lambda port=port: self.node(port).ping(), deadline)
        if not self.created:
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=30,
            )
            self.created = True
        deadline = time.monotonic() + 30
        for port in self.ports:
            self._wait(lambda port=port: self._ok(port), deadline)
        return self

    def _ok(self, port: int) -> bool:
        info = self.node(port).execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def _wait(self, check: Callable[[], object], deadline: float) -> None:
        while True:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                raise AssertionError("the Redis Cluster did not start")
            time.sleep(0.05)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=5)

    def owner(self, slot: int) -> int:
        """The port of the primary that serves ``slot``."""
        for start, end, primary, *_replicas in self.node(self.ports[0]).execute_command(
            "CLUSTER", "SLOTS"
        ):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"slot {slot} is not served")

    def move_slot(self, slot: int, to: int) -> None:
        """Migrate ``slot`` with its keys to the primary on port ``to`` (what
        ``redis-cli --cluster reshard`` does for each slot)."""
        src = self.owner(slot)
        src_id, dst_id = (self.node(p).execute_command("CLUSTER", "MYID") for p in (src, to))
        self.node(to).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        self.node(src).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := self.node(src).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.node(src).execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
        for port in self.ports:
            self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def ensure_running(self) -> None:
        """Started again (same ports and files) if a test stopped it."""
        if not self.procs or any(p.poll() is not None for p in self.procs):
            self.stop()
            self.start()

    def flushall(self) -> None:
        for port in self.ports:
            self.node(port).flushall()

    def keys_by_node(self) -> dict[int, list[str]]:
        """Every key, by the port of the primary that holds it."""
        return {port: sorted(k.decode() for k in self.node(port).keys("*")) for port in self.ports}

    def stop(self) -> None:
        """Stop every node (SIGKILL: what each fsynced is kept)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(10)
        self.procs = []


def redis_for(request: pytest.FixtureRequest, directory: Path) -> Iterator[Any]:
    """For a fixture (``yield from``): a redis-server of its own (``kind``
    "redis", the default), or the session's Redis Cluster ("redis-cluster"),
    emptied, and started again afterwards if the test stopped it. Starting
    a cluster takes seconds (its nodes must agree), one redis-server does not."""
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        server = RedisServer(directory / "redis").start()
        yield server
        server.stop()
        return
    cluster: RedisClusterServer = request.getfixturevalue("shared_redis_cluster")
    cluster.ensure_running()
    cluster.flushall()
    yield cluster
    cluster.ensure_running()


#: a test marked so runs against one redis-server and against a Redis Cluster
#: of three primaries (its ``redis_server`` fixture reads ``request.param``);
#: on the cluster in MQTT 5 only (tests/conftest.py): what reaches Redis does
#: not depend on the protocol version
both_kinds = pytest.mark.parametrize("redis_server", ["redis", "redis-cluster"], indirect=True)
