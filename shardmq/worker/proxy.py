"""The PROXY protocol (HAProxy, versions 1 and 2): the client's real address.

A load balancer in front of the broker opens each connection with a header
naming the client it relays for. :func:`parse_proxy_header` is pure (bytes in,
result out, no I/O) and is tested byte by byte; :class:`ProxyLayer` reads the
header off a new connection, answers ``get_extra_info("peername")`` with the
address it names, and passes every byte after it up unchanged (a TLS
ClientHello or an MQTT CONNECT that arrived in the same segment included).

A listener with ``proxy_protocol = true`` requires the header: a connection
without one is refused, since accepting it would let any client that reaches
the port directly claim to be the load balancer.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import NamedTuple

from .layer import Layer

#: The 12-byte signature that starts a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 1 header is at most 107 bytes, CRLF included (spec section 2.1).
V1_MAX_LENGTH = 107
_V1_PREFIX = b"PROXY "

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


class ProxyHeaderError(ValueError):
    """The connection does not start with a valid PROXY header."""


class ProxyHeader(NamedTuple):
    #: bytes the header takes; what follows belongs to the relayed connection
    length: int
    #: the client's (host, port), or None for "UNKNOWN"/LOCAL/non-IP families,
    #: in which case the connection's own address stands
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int


def parse_proxy_header(data: bytes | bytearray) -> ProxyHeader | None:
    """Parse the header at the start of ``data``.

    Returns None when more bytes are needed, a :class:`ProxyHeader` when the
    header is complete, and raises :class:`ProxyHeaderError` when ``data``
    cannot start a valid header.
    """
    head = bytes(data[:16])
    if head[:12] == V2_SIGNATURE[: len(head[:12])] and len(head) < 12:
        return None  # could still be either version
    if head.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if _V1_PREFIX.startswith(head[:6]) and len(head) < 6:
        return None
    if head.startswith(_V1_PREFIX):
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
        return None
    try:
        line = bytes(data[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(length, None, None, 1)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 header {line[:60]!r}")
    family = 4 if parts[1] == "TCP4" else 6
    source = _v1_address(parts[2], parts[4], family)
    destination = _v1_address(parts[3], parts[5], family)
    return ProxyHeader(length, source, destination, 1)


def _v1_address(host: str, port: str, family: int) -> tuple[str, int]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: bad address {host[:40]!r}") from None
    if address.version != family:
        raise ProxyHeaderError(f"PROXY v1: {host!r} is not an IPv{family} address")
    # ports are decimal without leading zeros, 0..65535 (spec section 2.1)
    if not port.isdigit() or (len(port) > 1 and port[0] == "0") or int(port) > 65535:
        raise ProxyHeaderError(f"PROXY v1: bad port {port[:10]!r}")
    return (str(address), int(port))


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    command = data[12]
    family = data[13]
    body_length = int.from_bytes(data[14:16], "big")
    length = 16 + body_length
    if command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2: unsupported version {command >> 4}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2: unknown command {command & 0x0F}")
    if len(data) < length:
        return None
    if command == _V2_LOCAL:
        # health checks from the proxy itself: the connection's own address stands
        return ProxyHeader(length, None, None, 2)
    body = bytes(data[16:length])
    if family == _V2_TCP4:
        if body_length < 12:
            raise ProxyHeaderError("PROXY v2: short IPv4 address block")
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        ports = body[8:12]
    elif family == _V2_TCP6:
        if body_length < 36:
            raise ProxyHeaderError("PROXY v2: short IPv6 address block")
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        ports = body[32:36]
    else:
        # UNSPEC, UDP or UNIX: nothing we can report as a client address;
        # the TLVs after the addresses are skipped in every case
        return ProxyHeader(length, None, None, 2)
    source = (src, int.from_bytes(ports[0:2], "big"))
    destination = (dst, int.from_bytes(ports[2:4], "big"))
    return ProxyHeader(length, source, destination, 2)


class ProxyLayer(Layer):
    """Reads the PROXY header, then passes everything through."""

    kind = "PROXY protocol connection"

    def __init__(self, upper: asyncio.Protocol, timeout: float) -> None:
        super().__init__(upper, timeout)
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.opened:
            self.upper.data_received(data)
            return
        if self.lower is None or self.lower.is_closing():
            return
        buffer = self._buffer + data if self._buffer else data
        try:
            header = parse_proxy_header(buffer)
        except ProxyHeaderError as exc:
            self._buffer = b""
            self.refuse(exc)
            return
        if header is None:
            self._buffer = buffer
            return
        self._buffer = b""
        if header.source is not None:
            self.extra["peername"] = header.source
            self.extra["proxy_peername"] = self.lower.get_extra_info("peername")
        if header.destination is not None:
            self.extra["sockname"] = header.destination
        self.open_upper()
        rest = buffer[header.length :]
        if rest and not self.is_closing():
            self.upper.data_received(rest)
