"""What the kernel knows about a socket's outgoing data.

Flow control (``Shard._check_stalled``) must tell a client that reads slowly
from one that stopped reading. The transport's own buffer cannot: Linux wakes
a writer only once a good share of the socket's send buffer is free, so
bytes can leave the transport in bursts seconds apart while the peer reads
all along. The kernel's own counters can: the bytes a TCP peer acknowledged
(``tcpi_bytes_acked``, Linux 4.1+) only grow while the peer's application
drains its receive window, and for a Unix-domain socket the bytes still in
the send queue (``SIOCOUTQ``) shrink as the peer reads.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

#: offset of ``tcpi_bytes_acked`` in ``struct tcp_info`` (linux/tcp.h)
_BYTES_ACKED = 120
_TCP_INFO_LEN = _BYTES_ACKED + 8
_U64 = struct.Struct("=Q")
_INT = struct.Struct("=i")


def tcp_bytes_acked(sock: Any) -> int | None:
    """Bytes the TCP peer has acknowledged so far, or None when not available."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < _TCP_INFO_LEN:
        return None
    return int(_U64.unpack_from(info, _BYTES_ACKED)[0])


def unsent_bytes(sock: Any) -> int | None:
    """Bytes still in the socket's send queue (Unix-domain: not yet read by the peer)."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return None
    return int(_INT.unpack(out)[0])
