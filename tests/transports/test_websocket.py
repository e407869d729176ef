"""MQTT over WebSocket and WebSocket over TLS (MQTT 5.0 section 6)."""

from __future__ import annotations

import base64
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.constants import PacketType, ReasonCode
from shardmq.protocol.packets import Connect, Publish, Subscribe, Subscription
from shardmq.worker.websocket import frame_header
from tests.helpers import WAIT, BrokerThread

from .conftest import PKI
from .helpers import listener_port, paho_client, read_all

MakeBroker = Callable[..., BrokerThread]


def test_publish_and_receive_over_ws(make_broker: MakeBroker, version: int) -> None:
    bt = make_broker(ws_port=0)
    port = listener_port(bt)
    sub = paho_client(port, transport="websockets", version=version)
    pub = paho_client(port, transport="websockets", version=version)
    try:
        sub.connect()
        pub.connect()
        sub.subscribe("ws/t", 1)
        pub.publish("ws/t", b"over ws", qos=1)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos) == ("ws/t", b"over ws", 1)
    finally:
        sub.disconnect()
        pub.disconnect()


def test_publish_and_receive_over_wss(make_broker: MakeBroker, pki: PKI, version: int) -> None:
    bt = make_broker(wss_port=0, certfile=pki.certfile, keyfile=pki.keyfile)
    port = listener_port(bt)
    client = paho_client(port, transport="websockets", cafile=pki.cafile, version=version)
    try:
        client.connect()
        client.subscribe("wss/t", 1)
        client.publish("wss/t", b"over wss", qos=1)
        assert client.get().payload == b"over wss"
    finally:
        client.disconnect()


def test_a_1_mib_message_arrives_intact(make_broker: MakeBroker) -> None:
    bt = make_broker(ws_port=0)
    port = listener_port(bt)
    payload = os.urandom(1 << 20)
    sub = paho_client(port, transport="websockets")
    pub = paho_client(port, transport="websockets")
    try:
        sub.connect()
        pub.connect()
        sub.subscribe("big", 1)
        pub.publish("big", payload, qos=1)
        assert sub.get().payload == payload
    finally:
        sub.disconnect()
        pub.disconnect()


def test_tcp_and_ws_clients_share_topics(make_broker: MakeBroker, clients: Any) -> None:
    bt = make_broker(ws_port=0)
    tcp = clients(bt.port)
    tcp.connect()
    tcp.subscribe("mixed", 0)
    ws = paho_client(listener_port(bt), transport="websockets")
    ws.connect()
    ws.publish("mixed", b"from ws")
    assert tcp.get().payload == b"from ws"
    ws.disconnect()


# -- raw WebSocket: framing and refusals ---------------------------------------------------


def handshake(
    path: str = "/mqtt",
    protocol: str | None = "mqtt",
    origin: str | None = None,
    upgrade: bool = True,
) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
    """A masked client frame; the mask is random, as RFC 6455 requires."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 0x10000:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class RawWS:
    """A WebSocket client over a plain socket, reading unmasked server frames."""

    def __init__(self, port: int, request: bytes | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.sendall(request if request is not None else handshake())
        self.buf = b""
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")
        self.decoder = Decoder(server=False, version=5)
        self.packets: list[Any] = []

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read_exact(2)
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read_exact(8), "big")
        return b0 & 0x0F, self._read_exact(n)

    def read_packet(self) -> Any:
        while not self.packets:
            opcode, data = self.read_frame()
            assert opcode == 0x2, f"opcode {opcode}"
            self.packets.extend(self.decoder.feed(data))
        return self.packets.pop(0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_a_packet_may_span_frames_and_a_frame_may_carry_several(make_broker: MakeBroker) -> None:
    bt = make_broker(ws_port=0)
    ws = RawWS(listener_port(bt))
    assert ws.status == 101
    assert "Sec-WebSocket-Protocol: mqtt" in ws.head
    connect = encode(Connect("framing"), 5)
    # CONNECT split over a binary frame and two continuation frames
    ws.send(
        client_frame(connect[:3], fin=False)
        + client_frame(connect[3:9], opcode=0x0, fin=False)
        + client_frame(connect[9:], opcode=0x0)
    )
    assert ws.read_packet().packet_type == PacketType.CONNACK
    # SUBSCRIBE and two PUBLISHes in one frame, the second PUBLISH cut in two frames
    sub = encode(Subscribe(1, [Subscription("f/#", 0)]), 5)
    pub1 = encode(Publish("f/1", b"one"), 5)
    pub2 = encode(Publish("f/2", b"two"), 5)
    ws.send(client_frame(sub + pub1 + pub2[:4]) + client_frame(pub2[4:]))
    assert ws.read_packet().packet_type == PacketType.SUBACK
    got = [ws.read_packet(), ws.read_packet()]
    assert [(p.topic, p.payload) for p in got] == [("f/1", b"one"), ("f/2", b"two")]
    ws.close()


def test_ping_gets_a_pong_and_close_is_answered(make_broker: MakeBroker) -> None:
    bt = make_broker(ws_port=0)
    ws = RawWS(listener_port(bt))
    ws.send(client_frame(b"hi", opcode=0x9))
    assert ws.read_frame() == (0xA, b"hi")
    ws.send(client_frame(b"\x03\xe8", opcode=0x8))
    opcode, data = ws.read_frame()
    assert opcode == 0x8 and data[:2] == b"\x03\xe8"
    ws.close()


def test_a_text_frame_closes_the_connection(make_broker: MakeBroker) -> None:
    # [MQTT-6.0.0-1]
    bt = make_broker(ws_port=0)
    ws = RawWS(listener_port(bt))
    ws.send(client_frame(encode(Connect("text"), 5), opcode=0x1))
    opcode, data = ws.read_frame()
    assert opcode == 0x8 and int.from_bytes(data[:2], "big") == 1003
    ws.close()


def status_of(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        answer = read_all(sock)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (handshake(upgrade=False), 426),  # a plain HTTP GET
        (handshake(protocol="chat"), 400),  # wrong subprotocol [MQTT-6.0.0-3]
        (handshake(protocol=None), 400),  # no subprotocol
        (handshake(path="/other"), 404),
        (b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc", 400),  # raw MQTT
        (b"POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ],
    ids=["plain-http", "wrong-subprotocol", "no-subprotocol", "wrong-path", "mqtt", "post"],
)
def test_bad_requests_are_refused_and_logged(
    make_broker: MakeBroker,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    expected: int,
) -> None:
    bt = make_broker(ws_port=0)
    port = listener_port(bt)
    established = RawWS(port)
    established.send(client_frame(encode(Connect("stays"), 5)))
    assert established.read_packet().reason_code == ReasonCode.SUCCESS
    with caplog.at_level(logging.INFO, logger="shardmq.listener"):
        status, _ = status_of(port, request_bytes)
    assert status == expected
    assert any(
        "WebSocket connection from 127.0.0.1" in r.getMessage() and "refused" in r.getMessage()
        for r in caplog.records
    )
    # the established connection is untouched
    established.send(client_frame(b"\xc0\x00"))  # PINGREQ
    assert established.read_packet().packet_type == PacketType.PINGRESP
    established.close()


def test_legacy_mqttv31_subprotocol_is_accepted(make_broker: MakeBroker) -> None:
    bt = make_broker(ws_port=0)
    ws = RawWS(listener_port(bt), handshake(protocol="mqttv3.1"))
    ws.close()
    assert ws.status == 101
    assert "Sec-WebSocket-Protocol: mqttv3.1" in ws.head


def test_allowed_origins(make_broker: MakeBroker) -> None:
    listener = {"type": "ws", "port": 0, "allowed_origins": ["https://app.example"]}
    bt = make_broker(listeners=[listener])
    port = listener_port(bt)
    for request in (handshake(origin="https://app.example"), handshake()):
        # a non-browser client sends no Origin: accepted too
        ws = RawWS(port, request)
        ws.close()
        assert ws.status == 101
    assert status_of(port, handshake(origin="https://evil.example"))[0] == 403


def test_custom_path(make_broker: MakeBroker) -> None:
    bt = make_broker(listeners=[{"type": "ws", "port": 0, "path": "/ws"}])
    port = listener_port(bt)
    client = paho_client(port, transport="websockets", path="/ws")
    client.connect()
    client.disconnect()


def test_frame_header_lengths() -> None:
    assert frame_header(0) == b"\x82\x00"
    assert frame_header(125) == b"\x82\x7d"
    assert frame_header(126) == b"\x82\x7e\x00\x7e"
    assert frame_header(65535) == b"\x82\x7e\xff\xff"
    assert frame_header(65536) == b"\x82\x7f" + (65536).to_bytes(8, "big")
