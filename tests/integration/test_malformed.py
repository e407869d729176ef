"""Malformed input over real sockets: the right answer for each, and no collateral.

The flood test opens one raw connection per malformed packet, in sequence,
while a well-behaved paho publisher keeps sending numbered QoS 1 messages to a
paho subscriber; every number must arrive.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from shardmq.protocol.codec import encode, encode_varint
from shardmq.protocol.constants import MQTT5, MQTT311
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Subscribe,
    Subscription,
)
from tests.helpers import WAIT, BrokerThread, Client, RawClient, read_until_eof

MAX_PACKET = 4096


def s16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def publish_bytes(
    first: int = 0x30,
    topic: bytes = b"t",
    pid: bytes = b"",
    props: bytes = b"\x00",
    payload: bytes = b"x",
) -> bytes:
    return frame(first, s16(topic) + pid + props + payload)


def connect_bytes(
    name: bytes = b"MQTT",
    level: int = 5,
    flags: int = 0x02,
    props: bytes | None = None,
    payload: bytes = s16(b"raw"),
) -> bytes:
    if props is None:
        props = b"\x00" if level == 5 else b""
    return frame(0x10, s16(name) + bytes((level, flags)) + b"\x00\x3c" + props + payload)


# (name, connect first?, bytes, expected v5 answer: ("connack"|"disconnect", code) or None)
Case = tuple[str, bool, bytes, tuple[str, int] | None]

_SUBSCRIBE = encode(Subscribe(1, [Subscription("a/#", 0)]), MQTT5)
_EXPIRY = b"\x02\x00\x00\x00\x0a"  # message expiry interval = 10

V5_CASES: list[Case] = [
    # after CONNACK: DISCONNECT with the reason code, then close
    ("bad varint", True, b"\x30\xff\xff\xff\xff\x01", ("disconnect", 0x81)),
    ("non-minimal varint", True, b"\xc0\x80\x00", ("disconnect", 0x81)),
    ("reserved flags", True, bytes((0x80,)) + _SUBSCRIBE[1:], ("disconnect", 0x81)),
    ("pingreq flags", True, b"\xc1\x00", ("disconnect", 0x81)),
    ("reserved packet type 0", True, b"\x00\x00", ("disconnect", 0x81)),
    ("qos 3", True, publish_bytes(0x36, pid=b"\x00\x01"), ("disconnect", 0x81)),
    ("dup on qos 0", True, publish_bytes(0x38), ("disconnect", 0x81)),
    ("wildcard in topic", True, publish_bytes(topic=b"a/+"), ("disconnect", 0x90)),
    ("hash in topic", True, publish_bytes(topic=b"a/#"), ("disconnect", 0x90)),
    ("invalid utf-8 topic", True, publish_bytes(topic=b"a/\xff\xfe"), ("disconnect", 0x81)),
    ("surrogate in topic", True, publish_bytes(topic=b"a/\xed\xa0\x80"), ("disconnect", 0x81)),
    ("nul in topic", True, publish_bytes(topic=b"a\x00b"), ("disconnect", 0x81)),
    ("second connect", True, encode(Connect("again"), MQTT5), ("disconnect", 0x82)),
    ("publish packet id 0", True, publish_bytes(0x32, pid=b"\x00\x00"), ("disconnect", 0x82)),
    (
        "subscribe packet id 0",
        True,
        frame(0x82, b"\x00\x00\x00" + s16(b"a") + b"\x00"),
        ("disconnect", 0x82),
    ),
    (
        "duplicate property",
        True,
        publish_bytes(props=bytes((2 * len(_EXPIRY),)) + _EXPIRY + _EXPIRY),
        ("disconnect", 0x82),
    ),
    ("unknown property", True, publish_bytes(props=b"\x02\x7f\x00"), ("disconnect", 0x81)),
    ("topic alias 0", True, publish_bytes(props=b"\x03\x23\x00\x00"), ("disconnect", 0x94)),
    ("subscribe without filters", True, frame(0x82, b"\x00\x01\x00"), ("disconnect", 0x82)),
    ("connack from client", True, b"\x20\x03\x00\x00\x00", ("disconnect", 0x82)),
    # only the fixed header and a little: the size is refused before the body arrives
    (
        "oversized packet",
        True,
        b"\x30" + encode_varint(MAX_PACKET * 10) + b"\x00\x01t",
        ("disconnect", 0x95),
    ),
    # before CONNACK: CONNACK with the reason code, then close
    ("connect reserved flag", False, connect_bytes(flags=0x03), ("connack", 0x81)),
    ("connect will qos 3", False, connect_bytes(flags=0x1E), ("connack", 0x81)),
    (
        "connect invalid utf-8 client id",
        False,
        connect_bytes(payload=s16(b"\xc3\x28")),
        ("connack", 0x81),
    ),
    (
        "connect duplicate property",
        False,
        connect_bytes(props=b"\x0a" + b"\x11\x00\x00\x00\x05" * 2),
        ("connack", 0x82),
    ),
    ("connect trailing bytes", False, connect_bytes(payload=s16(b"raw") + b"!"), ("connack", 0x81)),
    # no CONNECT yet, so no version to answer in: just close [MQTT-3.1.0-1]
    ("packet before connect", False, publish_bytes(), None),
]


def run_case(port: int, case: Case) -> str | None:
    """Play one case on a fresh connection; return a description of what went wrong."""
    name, connect_first, data, expected = case
    raw = RawClient(port)
    try:
        if connect_first:
            raw.send_packet(Connect(f"bad-{name.replace(' ', '-')}"))
            connack = raw.recv_packet()
            if not isinstance(connack, Connack) or connack.reason_code != 0:
                return f"{name}: setup CONNACK {connack!r}"
        raw.send(data)
        answer = raw.recv_packet()
        if expected is None:
            if answer is not None:
                return f"{name}: expected a plain close, got {answer!r}"
            return None
        kind, code = expected
        cls = Connack if kind == "connack" else Disconnect
        if not isinstance(answer, cls) or answer.reason_code != code:
            return f"{name}: expected {cls.__name__} 0x{code:02x}, got {answer!r}"
        if not raw.closed():
            return f"{name}: connection left open"
        return None
    except (TimeoutError, OSError) as exc:
        return f"{name}: {type(exc).__name__}: {exc}"
    finally:
        raw.close()


def test_malformed_flood_spares_good_clients(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    bt = make_broker(max_packet_size=MAX_PACKET)
    sub = clients(bt.port, client_id="steady-sub")
    sub.connect()
    sub.subscribe("steady/seq", qos=1)
    pub = clients(bt.port, client_id="steady-pub")
    pub.connect()

    done = threading.Event()
    sent: list[int] = []
    pump_errors: list[BaseException] = []

    def pump() -> None:
        try:
            i = 0
            while not done.is_set() or i < 50:
                rc = pub.publish("steady/seq", str(i), qos=1)
                assert not rc.is_failure, rc
                sent.append(i)
                i += 1
        except BaseException as exc:  # reported to the test thread
            pump_errors.append(exc)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    problems: list[str] = []
    try:
        for _ in range(3):
            for case in V5_CASES:
                problem = run_case(bt.port, case)
                if problem is not None:
                    problems.append(problem)
    finally:
        done.set()
        thread.join(WAIT * 4)
    assert not pump_errors, pump_errors
    assert len(sent) >= 50

    want = set(sent)
    got: set[int] = set()
    while not want <= got:
        got.add(int(sub.get().payload))  # QoS 1 may duplicate; a set absorbs that
    assert sorted(set(problems)) == [], "\n".join(sorted(set(problems)))
    # the good clients were never disconnected
    assert sub.disconnects.empty() and pub.disconnects.empty()


# -- MQTT 3.1.1 ----------------------------------------------------------------------

V311_MALFORMED = {
    "qos 3": publish_bytes(0x36, pid=b"\x00\x01", props=b""),
    "bad varint": b"\x30\xff\xff\xff\xff\x01",
    "reserved flags": bytes((0x80,)) + encode(Subscribe(1, [Subscription("a", 0)]), MQTT311)[1:],
    "wildcard in topic": publish_bytes(topic=b"a/+", props=b""),
    "invalid utf-8 topic": publish_bytes(topic=b"\xff", props=b""),
    "second connect": encode(Connect("again", protocol_version=MQTT311), MQTT311),
    "packet id 0": publish_bytes(0x32, pid=b"\x00\x00", props=b""),
    "auth packet": b"\xf0\x00",
}


@pytest.mark.parametrize("name", list(V311_MALFORMED))
def test_v311_malformed_closes_without_disconnect(
    make_broker: Callable[..., BrokerThread], name: str
) -> None:
    """3.1.1 has no server DISCONNECT: the broker just closes."""
    bt = make_broker()
    sock = socket.create_connection(("127.0.0.1", bt.port), timeout=WAIT)
    try:
        sock.sendall(encode(Connect("old", protocol_version=MQTT311), MQTT311))
        sock.settimeout(WAIT)
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.sendall(V311_MALFORMED[name])
        assert read_until_eof(sock) == b""
    finally:
        sock.close()


def test_v311_malformed_connect_closes_without_connack(
    make_broker: Callable[..., BrokerThread],
) -> None:
    """[MQTT-3.1.2-3] reserved flag set: disconnect. No 3.1.1 return code fits a
    malformed CONNECT, so no CONNACK is sent [MQTT-3.2.2-6]."""
    bt = make_broker()
    sock = socket.create_connection(("127.0.0.1", bt.port), timeout=WAIT)
    try:
        sock.sendall(connect_bytes(level=4, flags=0x03))
        assert read_until_eof(sock) == b""
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("name", "level"),
    [(b"MQIsdp", 3), (b"MQTT", 6), (b"MQTT", 3), (b"MQTT", 0)],
    ids=["MQIsdp-3", "MQTT-6", "MQTT-3", "MQTT-0"],
)
def test_unsupported_protocol_level(
    make_broker: Callable[..., BrokerThread], name: bytes, level: int
) -> None:
    """[MQTT-3.1.2-2] CONNACK return code 1 in the 3.1.1 format, then close."""
    bt = make_broker()
    sock = socket.create_connection(("127.0.0.1", bt.port), timeout=WAIT)
    try:
        sock.sendall(connect_bytes(name=name, level=level, props=b""))
        assert read_until_eof(sock) == b"\x20\x02\x00\x01"
    finally:
        sock.close()


def test_broker_survives_and_serves_after_garbage(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client], version: int
) -> None:
    """Random junk on many sockets, then a normal client still gets through."""
    bt = make_broker()
    junk = [b"\xff" * 64, b"\x82\x00", b"\x10\xff\xff\xff\xff\xff", b"\xe0\x00" * 8]
    for data in junk:
        sock = socket.create_connection(("127.0.0.1", bt.port), timeout=WAIT)
        try:
            sock.sendall(data)
            answer = read_until_eof(sock)
            assert answer == b"", answer
        finally:
            sock.close()
    c = clients(bt.port, version=version)
    c.connect()
    c.subscribe("alive", qos=1)
    c.publish("alive", b"yes", qos=1)
    assert c.get().payload == b"yes"
