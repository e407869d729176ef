"""Listening sockets, ``resolve_workers`` and ``describe_exit``: no fork here."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading

import pytest

from shardmq.supervisor import (
    EXIT_BOOT,
    EXIT_CONFIG,
    Supervisor,
    WorkerContext,
    describe_exit,
    listening_sockets,
    resolve_workers,
)


def close_all(groups: list[list[socket.socket]]) -> None:
    for group in groups:
        for sock in group:
            sock.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_port_zero_gives_every_worker_the_same_port() -> None:
    groups = listening_sockets([("127.0.0.1", 0), ("127.0.0.1", 0)], 3)
    try:
        assert len(groups) == 3
        assert all(len(group) == 2 for group in groups)
        for listener in range(2):
            ports = {group[listener].getsockname()[1] for group in groups}
            assert len(ports) == 1 and ports != {0}
        assert groups[0][0].getsockname()[1] != groups[0][1].getsockname()[1]
        for group in groups:
            for sock in group:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        # One listening socket per worker: distinct file descriptions.
        assert len({group[0].fileno() for group in groups}) == 3
    finally:
        close_all(groups)


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_host() -> None:
    groups = listening_sockets([("::1", 0)], 2)
    try:
        assert groups[0][0].family == socket.AF_INET6
        assert groups[0][0].getsockname()[1] == groups[1][0].getsockname()[1]
    finally:
        close_all(groups)


def test_a_port_in_use_is_refused() -> None:
    # SO_REUSEPORT would otherwise let a second broker share the port silently.
    first = listening_sockets([("127.0.0.1", 0)], 2)
    try:
        port = first[0][0].getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}") as info:
            listening_sockets([("127.0.0.1", 0), ("127.0.0.1", port)], 2)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        close_all(first)


def test_supervisor_ports_are_known_before_run() -> None:
    sup = Supervisor(2, [("127.0.0.1", 0), ("127.0.0.1", 0)], lambda ctx: 0)
    try:
        assert len(sup.ports) == 2
        assert 0 not in sup.ports
    finally:
        sup.close()


@pytest.mark.parametrize(
    "settings",
    [{"heartbeat_timeout": 0}, {"shutdown_timeout": -1.0}, {"backoff_max": float("nan")}],
)
def test_supervisor_refuses_bad_timeouts(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Supervisor(1, [("127.0.0.1", 0)], lambda ctx: 0, **settings)  # type: ignore[arg-type]


def test_resolve_workers() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert resolve_workers("auto") == cpus
    assert resolve_workers(" AUTO ") == cpus
    assert resolve_workers(3) == 3
    assert resolve_workers("2") == 2


@pytest.mark.parametrize("value", [0, -1, "0", "abc", "", "1.5", True])
def test_resolve_workers_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        resolve_workers(value)  # type: ignore[arg-type]


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with code 0 (ok)"
    assert describe_exit(EXIT_CONFIG << 8) == "exited with code 3 (config error)"
    assert describe_exit(EXIT_BOOT << 8) == "exited with code 4 (boot error)"
    assert describe_exit(7 << 8) == "exited with code 7"
    assert describe_exit(int(signal.SIGKILL)) == "killed by SIGKILL"


def test_heartbeat_writes_one_byte_and_never_blocks() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        ctx = WorkerContext(0, 1, [], "/tmp", 1, write_end)
        assert not ctx.booted
        ctx.heartbeat()
        assert os.read(read_end, 10) == b"."
        assert ctx.booted
        for _ in range(100_000):  # far past the pipe's capacity
            ctx.heartbeat()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_run_outside_the_main_thread_fails_cleanly() -> None:
    sup = Supervisor(1, [("127.0.0.1", 0)], lambda ctx: 0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sup.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert sup.run_dir is not None and not os.path.exists(sup.run_dir)
    with pytest.raises(RuntimeError):
        sup.run()
