"""The PROXY protocol: the pure header parser, then the address hooks see."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

from shardmq.protocol.codec import encode
from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import Connect, Publish
from shardmq.worker.proxy import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)
from tests.helpers import WAIT, BrokerThread

from .conftest import PKI
from .helpers import listener_port, mqtt_connect, read_all, read_packet, tls_socket

MakeBroker = Callable[..., BrokerThread]

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 1883\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 1883\r\n"


def v2(
    src: str = "203.0.113.9",
    dst: str = "192.0.2.1",
    sport: int = 5151,
    dport: int = 8883,
    command: int = 0x21,
    tlvs: bytes = b"",
) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if a.version == 4 else 0x21
    body = a.packed + b.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + tlvs
    return V2_SIGNATURE + bytes((command, family)) + len(body).to_bytes(2, "big") + body


# -- the parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (V1, ProxyHeader(len(V1), ("203.0.113.7", 4242), ("192.0.2.1", 1883), 1)),
        (V1_TCP6, ProxyHeader(len(V1_TCP6), ("2001:db8::7", 4242), ("2001:db8::1", 1883), 1)),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(15, None, None, 1)),
        (v2(), ProxyHeader(28, ("203.0.113.9", 5151), ("192.0.2.1", 8883), 2)),
        (
            v2("2001:db8::9", "2001:db8::1"),
            ProxyHeader(52, ("2001:db8::9", 5151), ("2001:db8::1", 8883), 2),
        ),
        (v2(tlvs=b"\x04\x00\x01x"), ProxyHeader(32, ("203.0.113.9", 5151), ("192.0.2.1", 8883), 2)),
        (v2(command=0x20), ProxyHeader(28, None, None, 2)),  # LOCAL: a health check
    ],
    ids=["v1-tcp4", "v1-tcp6", "v1-unknown", "v2-tcp4", "v2-tcp6", "v2-tlv", "v2-local"],
)
def test_parse_fed_one_byte_at_a_time(header: bytes, expected: ProxyHeader) -> None:
    data = header + b"\x10rest"
    for n in range(len(header)):
        assert parse_proxy_header(data[:n]) is None, n
    assert parse_proxy_header(data) == expected
    assert data[expected.length :] == b"\x10rest"


@pytest.mark.parametrize(
    "data",
    [
        b"\x10\x10\x00\x04MQTT",  # an MQTT CONNECT: no header at all
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 4242\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",  # wrong family
        b"PROXY TCP4 203.0.113.7 192.0.2.1 04242 1883\r\n",  # leading zero
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 1883\r\n",
        b"PROXY TCP4 999.0.113.7 192.0.2.1 1 1883\r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 1 1883\r\n",
        b"PROXY " + b"x" * 120,  # no CRLF within 107 bytes
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # unknown command
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # address block too short
    ],
)
def test_bad_headers_are_errors(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


# -- through the broker -------------------------------------------------------------------


def recording_broker(make_broker: MakeBroker, **settings: Any) -> tuple[BrokerThread, list[Any]]:
    seen: list[Any] = []

    def setup(broker: Any) -> None:
        @broker.on_connect
        async def record(client: Any, packet: Any) -> bool:
            seen.append(client.remote_address)
            return True

    return make_broker(setup=setup, **settings), seen


@pytest.mark.parametrize("header", [V1, v2()], ids=["v1", "v2"])
def test_the_hook_sees_the_address_from_the_header(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    bt, seen = recording_broker(
        make_broker, listeners=[{"type": "tcp", "port": 0, "proxy_protocol": True}]
    )
    with socket.create_connection(("127.0.0.1", listener_port(bt)), timeout=WAIT) as sock:
        # header and CONNECT in one segment, as a proxy may send them
        sock.sendall(header + encode(Connect("proxied"), 5))
        with caplog.at_level(logging.INFO, logger="shardmq.connection"):
            assert read_packet(sock).reason_code == ReasonCode.SUCCESS
            # a topic name the broker refuses makes it log the client's address
            sock.sendall(encode(Publish("bad/#", b""), 5))
            read_all(sock)
    expected = ("203.0.113.7", 4242) if header == V1 else ("203.0.113.9", 5151)
    assert seen == [expected]
    assert any(expected[0] in r.getMessage() for r in caplog.records)


def test_proxy_header_before_tls(make_broker: MakeBroker, pki: PKI) -> None:
    listener = {
        "type": "tls",
        "port": 0,
        "certfile": pki.certfile,
        "keyfile": pki.keyfile,
        "proxy_protocol": True,
    }
    bt, seen = recording_broker(make_broker, listeners=[listener])
    raw = socket.create_connection(("127.0.0.1", listener_port(bt)), timeout=WAIT)
    raw.sendall(v2("2001:db8::42", "2001:db8::1", 6000, 8883))
    with tls_socket(0, pki.cafile, sock=raw) as sock:
        assert mqtt_connect(sock).reason_code == ReasonCode.SUCCESS
    assert seen == [("2001:db8::42", 6000)]


def test_local_command_keeps_the_real_address(make_broker: MakeBroker) -> None:
    bt, seen = recording_broker(
        make_broker, listeners=[{"type": "tcp", "port": 0, "proxy_protocol": True}]
    )
    with socket.create_connection(("127.0.0.1", listener_port(bt)), timeout=WAIT) as sock:
        sock.sendall(v2(command=0x20))
        assert mqtt_connect(sock).reason_code == ReasonCode.SUCCESS
    assert seen[0][0] == "127.0.0.1"


def test_a_connection_without_the_header_is_refused(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bt, seen = recording_broker(
        make_broker, listeners=[{"type": "tcp", "port": 0, "proxy_protocol": True}]
    )
    port = listener_port(bt)
    with (
        caplog.at_level(logging.INFO, logger="shardmq.listener"),
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock,
    ):
        assert mqtt_connect(sock) is None
    assert seen == []
    assert any("no PROXY protocol header" in r.getMessage() for r in caplog.records)
