"""Listening sockets for the workers: one SO_REUSEPORT socket per worker and address.

Each worker owns its own listener (as gunicorn does with ``reuse_port``), so
the kernel spreads new connections over the workers' accept queues and no
worker wakes for a connection another one takes. The supervisor creates them
all once and keeps them open: a worker that dies and is restarted gets the very
same socket back, and the connections the kernel queued on it meanwhile are
still there.

SO_REUSEPORT lets any process of the same user join the group, so a second
broker started on the same port would silently take half the connections.
Before the group is bound, a plain probe socket checks that the port is free.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["listening_sockets"]


def listening_sockets(
    addresses: list[tuple[str, int]], workers: int, backlog: int = 4096
) -> list[list[socket.socket]]:
    """Bind and listen on every address once per worker; ``result[worker_id][listener_index]``.

    Port 0 binds the first worker's socket to a free port and the others to
    the port it got, so a group shares one port. IPv6 hosts (``"::"``,
    ``"::1"``) and names are resolved with ``getaddrinfo``; an empty host
    means every address. Raises ``OSError`` naming the address that failed,
    after closing whatever was already bound.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this platform")
    groups: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for host, port in addresses:
            try:
                family, sockaddr = _resolve(host, port)
                if port != 0:
                    _check_free(family, sockaddr)
                for group in groups:
                    sock = _listen(family, sockaddr, backlog)
                    group.append(sock)
                    if sockaddr[1] == 0:
                        sockaddr = (sockaddr[0], sock.getsockname()[1], *sockaddr[2:])
            except OSError as exc:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                code = exc.errno if exc.errno is not None else errno.EINVAL
                raise OSError(code, f"cannot listen on {where}: {exc.strerror or exc}") from exc
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, tuple(sockaddr)


def _check_free(family: socket.AddressFamily, sockaddr: tuple[object, ...]) -> None:
    """Fail if anyone listens on the address already (SO_REUSEPORT would share it)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR so that connections in TIME_WAIT from a previous run
        # do not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)


def _listen(
    family: socket.AddressFamily, sockaddr: tuple[object, ...], backlog: int
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
