"""The load generator's own minimal MQTT client codec.

Only what a benchmark client sends is encoded here, and every packet is built once as a
template: CONNECT and SUBSCRIBE are whole byte strings, a PUBLISH is a pre-built head
(fixed header, topic, properties) followed by a fixed-size payload whose first 16 bytes carry
the send timestamp, the publisher id and a sequence number. Decoding of inbound packets lives
in the client's ``data_received`` (bench/load.py) as one offset walk over the buffer, because a
function call per packet is the largest cost the generator can avoid.

This module does not validate what a broker sends; a benchmark against a broker that speaks
malformed MQTT fails loudly in the parser instead.

The WebSocket helpers at the end (``--transport ws``) build the client's Upgrade request,
check the server's answer and build masked frame headers; framing itself lives in
``WsTransport`` and ``WsClient`` (bench/load.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

# Packet types (high nibble of the first byte), MQTT 5.0 section 2.1.2.
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

# CONNACK property carrying the server's receive maximum [MQTT-3.2.2.3.3].
PROP_RECEIVE_MAXIMUM = 0x21

#: Payload prefix: send time (time.monotonic_ns, comparable across processes on one host),
#: publisher id, sequence number.
STAMP = struct.Struct(">QII")
STAMP_SIZE = STAMP.size

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


def varint(value: int) -> bytes:
    """Variable byte integer [MQTT-1.5.5]."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    """Length-prefixed UTF-8 string [MQTT-1.5.4]."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(
    client_id: str,
    protocol: int,
    keepalive: int,
    clean: bool = True,
    expiry: int = 0,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """A CONNECT packet; protocol is 5 (MQTT 5.0) or 4 (MQTT 3.1.1). ``expiry``: the
    Session Expiry Interval (MQTT 5.0; 3.1.1 keeps a Clean Session 0 session)."""
    flags = 0x02 if clean else 0x00
    tail = utf8(client_id)
    if username is not None:
        flags |= 0x80
        tail += utf8(username)
    if password is not None:
        flags |= 0x40
        tail += utf8(password)
    head = utf8("MQTT") + bytes([protocol, flags]) + struct.pack(">H", keepalive)
    props = b"\x00" if protocol == 5 else b""
    if protocol == 5 and expiry:
        props = b"\x05\x11" + struct.pack(">I", expiry)
    return _packet(0x10, head + props + tail)


def subscribe(packet_id: int, topic_filter: str, qos: int, protocol: int) -> bytes:
    """A SUBSCRIBE packet for one filter (fixed header flags 0b0010 [MQTT-3.8.1-1])."""
    props = b"\x00" if protocol == 5 else b""
    body = struct.pack(">H", packet_id) + props + utf8(topic_filter) + bytes([qos])
    return _packet(0x82, body)


def publish_template(topic: str, qos: int, size: int, protocol: int) -> tuple[bytes, bytes, bytes]:
    """Pieces of a PUBLISH with a ``size``-byte payload: ``(head, tail, pad)``.

    A QoS 0 packet is ``head + tail + STAMP.pack(...) + pad``; at QoS 1/2 the two-byte packet
    id goes between ``head`` and ``tail``. ``size`` must be at least STAMP_SIZE.
    """
    if size < STAMP_SIZE:
        raise ValueError(f"payload size must be at least {STAMP_SIZE} bytes")
    topic_b = utf8(topic)
    tail = b"\x00" if protocol == 5 else b""
    remaining = len(topic_b) + (2 if qos else 0) + len(tail) + size
    head = bytes([0x30 | (qos << 1)]) + varint(remaining) + topic_b
    return head, tail, bytes(size - STAMP_SIZE)


def ack(packet_type: int, packet_id: bytes) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP with success (short form, valid in 3.1.1 and 5.0)."""
    first = (packet_type << 4) | (0x02 if packet_type == PUBREL else 0)
    return bytes([first, 2]) + packet_id


def read_varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """Decode a variable byte integer at ``pos``: ``(value, next_pos)`` or None if truncated."""
    value = 0
    shift = 0
    end = len(buf)
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("malformed variable byte integer")
    return None


def connack_receive_maximum(body: bytes, protocol: int) -> tuple[int, int | None]:
    """Reason/return code and Receive Maximum (None when absent) of a CONNACK body."""
    code = body[1]
    if protocol != 5 or len(body) <= 2:
        return code, None
    decoded = read_varint(body, 2)
    if decoded is None:
        return code, None
    length, pos = decoded
    end = pos + length
    while pos < end:
        ident = body[pos]
        pos += 1
        if ident == PROP_RECEIVE_MAXIMUM:
            return code, struct.unpack_from(">H", body, pos)[0]
        pos = _skip_property(body, ident, pos)
    return code, None


# Property identifier -> encoded width; -1 = two-byte-length string/binary, -2 = string pair,
# 0 = variable byte integer [MQTT-2.2.2.2].
_PROPERTY_WIDTH = {
    0x01: 1, 0x02: 4, 0x03: -1, 0x08: -1, 0x09: -1, 0x0B: 0, 0x11: 4, 0x12: -1, 0x13: 2,
    0x15: -1, 0x16: -1, 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: -1, 0x1C: -1, 0x1F: -1, 0x21: 2,
    0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: -2, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


def _skip_property(body: bytes, ident: int, pos: int) -> int:
    width = _PROPERTY_WIDTH.get(ident)
    if width is None:
        raise ValueError(f"unknown property 0x{ident:02x}")
    if width > 0:
        return pos + width
    if width == 0:
        decoded = read_varint(body, pos)
        if decoded is None:
            raise ValueError("truncated property")
        return decoded[1]
    for _ in range(-width):
        pos += 2 + struct.unpack_from(">H", body, pos)[0]
    return pos


# --------------------------------------------------------------------------------------------
# MQTT over WebSocket (RFC 6455; MQTT 5.0 section 6): the client side of the handshake and
# the frame header. Client frames must be masked [RFC 6455 5.3]; server frames never are.
# --------------------------------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

WS_OP_CONT = 0x0
WS_OP_TEXT = 0x1
WS_OP_BINARY = 0x2
WS_OP_CLOSE = 0x8
WS_OP_PING = 0x9
WS_OP_PONG = 0xA


def ws_key() -> bytes:
    """A random Sec-WebSocket-Key (base64 of 16 random bytes)."""
    return base64.b64encode(os.urandom(16))


def ws_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer ``key`` with [RFC 6455 4.2.2]."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_upgrade_request(host: str, port: int, path: str, key: bytes) -> bytes:
    """The HTTP/1.1 Upgrade request offering the ``mqtt`` subprotocol [MQTT-6.0.0-3]."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n"
        "\r\n"
    ).encode()


def ws_check_response(head: bytes, key: bytes) -> str:
    """Empty if ``head`` (the response up to the blank line) accepts the upgrade, else why not."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        return f"HTTP status {lines[0]!r}"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept", "").encode() != ws_accept(key):
        return "wrong Sec-WebSocket-Accept"
    if headers.get("sec-websocket-protocol", "").lower() != "mqtt":
        return f"subprotocol {headers.get('sec-websocket-protocol')!r}, not 'mqtt'"
    return ""


def ws_masked_header(length: int, mask: bytes, opcode: int = WS_OP_BINARY) -> bytes:
    """Header of a final, masked client frame of ``length`` payload bytes, mask key included."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + mask
    if length < 0x10000:
        return bytes((first, 0x80 | 126)) + length.to_bytes(2, "big") + mask
    return bytes((first, 0x80 | 127)) + length.to_bytes(8, "big") + mask


def ws_mask_int(mask: bytes, length: int) -> int:
    """The mask key repeated over ``length`` bytes, as a big-endian integer to XOR with."""
    return int.from_bytes((mask * (length // 4 + 1))[:length], "big")


def ws_unmask(payload: bytes, mask: bytes) -> bytes:
    """Masking is its own inverse: unmask (or mask) ``payload`` with ``mask``."""
    n = len(payload)
    return (int.from_bytes(payload, "big") ^ ws_mask_int(mask, n)).to_bytes(n, "big")
