"""Random MQTT packets for the fuzzers: well-formed ones of every type, and damage.

``Sampler(rng)`` draws well-formed packets with random fields and random
properties (only those the packet may carry) for either protocol version,
encoded by the codec's own encoder, and hand-framed v5 packets whose property
block is arbitrary bytes. ``mutate(rng, data)`` damages bytes the ways a
broken or hostile client would: bit flips, truncation, a corrupted remaining
length, another packet type, repeated or spliced-in bytes.

Topics, filters and client ids come from small fixed sets: the live fuzz
checks that the broker's memory stays flat, so the state clients may
legitimately leave behind (retained messages, sessions) has to be bounded.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from shardmq.protocol.codec import encode, encode_varint
from shardmq.protocol.constants import (
    MQTT5,
    MQTT311,
    PROPERTY_TABLE,
    WILL,
    PacketType,
    PropertyId,
    PropertyType,
)
from shardmq.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)

TOPICS = (
    "fuzz/a",
    "fuzz/b/c",
    "fuzz/\u00fc/\u4e2d",
    "fuzz/" + "x" * 300,
    "fuzz",
    "fuzz/",
    "/fuzz",
    "$fuzz/t",
    "$SYS/fuzz",
    "a/b/c/d/e/f/g/h",
)
FILTERS = (
    "#",
    "+",
    "fuzz/#",
    "fuzz/+",
    "+/+/#",
    "fuzz/a",
    "$fuzz/#",
    "$SYS/#",
    "$share/g/fuzz/#",
    "$share/h/#",
    "a/+/c/#",
)
CLIENT_IDS = tuple(f"fuzz-{i}" for i in range(32)) + ("",)
TEXT = ("", "x", "fuzz", "\u00e9\u00e8", "\U0001f600", "k" * 100, "a b\tc")

#: Reason codes a client may put in each packet (spec 3.x.2.1).
_PUBACK_CODES = (0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99)
_PUBREL_CODES = (0x00, 0x92)
_DISCONNECT_CODES = (0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x95, 0x96, 0x97, 0x98)
_AUTH_CODES = (0x00, 0x18, 0x19)
_BOOLEAN = frozenset(
    {
        PropertyId.PAYLOAD_FORMAT_INDICATOR,
        PropertyId.REQUEST_PROBLEM_INFORMATION,
        PropertyId.REQUEST_RESPONSE_INFORMATION,
        PropertyId.MAXIMUM_QOS,
        PropertyId.RETAIN_AVAILABLE,
        PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE,
        PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        PropertyId.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
#: Properties a well-formed client packet must not carry.
_NEVER_FROM_CLIENT = frozenset({(PacketType.PUBLISH, PropertyId.SUBSCRIPTION_IDENTIFIER)})
_U32_VALUES = (0, 1, 2, 5, 60, 3600, 0xFFFFFFFF)
_EXPIRY_VALUES = _U32_VALUES


def frame(first: int, body: bytes) -> bytes:
    """A packet: first byte, remaining length, body."""
    return bytes((first,)) + encode_varint(len(body)) + body


def utf8(s: str) -> bytes:
    data = s.encode()
    return struct.pack(">H", len(data)) + data


class Sampler:
    """Draws random well-formed MQTT packets from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- fields ------------------------------------------------------------------

    def payload(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return b""
        if r < 0.9:
            return rng.randbytes(rng.randrange(1, 64))
        if r < 0.99:
            return rng.randbytes(rng.randrange(64, 4096))
        return rng.randbytes(rng.randrange(4096, 16384))

    def packet_id(self) -> int:
        # A small range, so identifiers collide (in use, not found, reused).
        return self.rng.choice((1, 2, 3, 4, 5, 7, 100, 65535))

    def properties(self, slot: int) -> Properties:
        """Random properties allowed in packet ``slot``, each with a legal value."""
        rng = self.rng
        props = Properties()
        if rng.random() < 0.4:
            return props
        for pid, (name, ptype, allowed) in PROPERTY_TABLE.items():
            if slot not in allowed or (slot, pid) in _NEVER_FROM_CLIENT or rng.random() > 0.25:
                continue
            value: object
            if pid in _BOOLEAN:
                value = rng.randrange(2)
            elif ptype == PropertyType.BYTE:
                value = rng.randrange(3)
            elif pid == PropertyId.TOPIC_ALIAS:
                value = rng.randrange(1, 12)
            elif ptype == PropertyType.TWO_BYTE_INT:
                value = rng.choice((1, 2, 10, 100, 65535))
            elif pid == PropertyId.MESSAGE_EXPIRY_INTERVAL:
                value = rng.choice(_EXPIRY_VALUES)
            elif ptype == PropertyType.FOUR_BYTE_INT:
                value = rng.choice(_U32_VALUES)
                if value == 0 and pid == PropertyId.MAXIMUM_PACKET_SIZE:
                    value = 20
            elif ptype == PropertyType.VARIABLE_BYTE_INT:
                value = [rng.choice((1, 127, 128, 16384, 268435455))]
            elif ptype == PropertyType.UTF8_STRING:
                value = rng.choice(TEXT)
            elif ptype == PropertyType.BINARY:
                value = rng.randbytes(rng.randrange(0, 40))
            else:
                value = [(rng.choice(TEXT), rng.choice(TEXT)) for _ in range(rng.randrange(1, 4))]
            setattr(props, name, value)
        return props

    # -- packets -----------------------------------------------------------------

    def connect(self, version: int) -> Connect:
        rng = self.rng
        v5 = version == MQTT5
        will = None
        if rng.random() < 0.3:
            will = Will(
                rng.choice(TOPICS),
                self.payload()[:256],
                rng.randrange(3),
                rng.random() < 0.3,
                self.properties(WILL) if v5 else None,
            )
        username = password = None
        if rng.random() < 0.2:
            username = rng.choice(TEXT)
        if rng.random() < 0.2 and (v5 or username is not None):
            password = rng.randbytes(rng.randrange(0, 20))
        client_id = rng.choice(CLIENT_IDS)
        clean = rng.random() < 0.5
        if not v5 and not client_id:
            clean = True  # [MQTT-3.1.3-7]
        return Connect(
            client_id=client_id,
            protocol_version=version,
            clean_start=clean,
            keep_alive=rng.choice((0, 1, 5, 60, 65535)),
            will=will,
            username=username,
            password=password,
            properties=self.properties(PacketType.CONNECT) if v5 else None,
        )

    def publish(self, version: int) -> Publish:
        rng = self.rng
        qos = rng.randrange(3)
        props = self.properties(PacketType.PUBLISH) if version == MQTT5 else None
        topic = rng.choice(TOPICS)
        if props is not None and props.topic_alias is not None and rng.random() < 0.5:
            topic = ""  # use an alias set by an earlier PUBLISH
        return Publish(
            topic,
            self.payload(),
            qos,
            rng.random() < 0.2,
            qos > 0 and rng.random() < 0.2,
            self.packet_id() if qos else None,
            props,
        )

    def ack(self, version: int) -> Packet:
        rng = self.rng
        cls = rng.choice((Puback, Pubrec, Pubrel, Pubcomp))
        codes = _PUBREL_CODES if cls in (Pubrel, Pubcomp) else _PUBACK_CODES
        if version != MQTT5:
            return cls(self.packet_id())
        return cls(self.packet_id(), rng.choice(codes), self.properties(cls.packet_type))

    def subscribe(self, version: int) -> Subscribe:
        rng = self.rng
        v5 = version == MQTT5
        subs = []
        for _ in range(rng.randrange(1, 5)):
            topic_filter = rng.choice(FILTERS)
            subs.append(
                Subscription(
                    topic_filter,
                    rng.randrange(3),
                    v5 and not topic_filter.startswith("$share/") and rng.random() < 0.2,
                    v5 and rng.random() < 0.2,
                    rng.randrange(3) if v5 else 0,
                )
            )
        props = self.properties(PacketType.SUBSCRIBE) if v5 else None
        return Subscribe(self.packet_id(), subs, props)

    def unsubscribe(self, version: int) -> Unsubscribe:
        rng = self.rng
        filters = [rng.choice(FILTERS) for _ in range(rng.randrange(1, 4))]
        props = self.properties(PacketType.UNSUBSCRIBE) if version == MQTT5 else None
        return Unsubscribe(self.packet_id(), filters, props)

    def disconnect(self, version: int) -> Disconnect:
        if version != MQTT5:
            return Disconnect()
        return Disconnect(
            self.rng.choice(_DISCONNECT_CODES), self.properties(PacketType.DISCONNECT)
        )

    def auth(self, version: int) -> Auth:
        return Auth(self.rng.choice(_AUTH_CODES), self.properties(PacketType.AUTH))

    def ping(self, version: int) -> Pingreq:
        return Pingreq()

    def server_packet(self, version: int) -> Packet:
        """A packet only a server sends (a client sending one breaks the protocol)."""
        rng = self.rng
        v5 = version == MQTT5
        kind = rng.randrange(4)
        if kind == 0:
            return Connack(rng.random() < 0.5, rng.choice((0x00, 0x80, 0x87, 0x9F)))
        if kind == 1:
            codes = [rng.choice((0x00, 0x01, 0x02, 0x80)) for _ in range(rng.randrange(1, 4))]
            return Suback(self.packet_id(), codes)
        if kind == 2:
            return Unsuback(self.packet_id(), [0x00, 0x11] if v5 else [])
        return Pingresp()

    def client_packet(self, version: int) -> bytes:
        """One encoded packet a client could send after CONNECT, weighted like real traffic."""
        make: Callable[[int], Packet] = self.rng.choices(
            (self.publish, self.ack, self.subscribe, self.unsubscribe, self.ping)
            + ((self.auth,) if version == MQTT5 else ()),
            (10, 4, 3, 2, 2) + ((1,) if version == MQTT5 else ()),
        )[0]
        return encode(make(version), version)

    # -- v5 packets with an arbitrary property block -------------------------------

    def raw_properties(self) -> bytes:
        """A property block of random identifiers and values, length mostly right."""
        rng = self.rng
        ids = list(PROPERTY_TABLE) + [0x00, 0x04, 0x0A, 0x7F, 0x80, 0xFF]
        parts = []
        for _ in range(rng.randrange(0, 6)):
            pid = rng.choice(ids)
            spec = PROPERTY_TABLE.get(pid)
            ptype = spec[1] if spec is not None else rng.choice(list(PropertyType))
            if ptype == PropertyType.BYTE:
                value = bytes((rng.choice((0, 1, 2, 255)),))
            elif ptype == PropertyType.TWO_BYTE_INT:
                value = struct.pack(">H", rng.choice((0, 1, 65535)))
            elif ptype == PropertyType.FOUR_BYTE_INT:
                values = (
                    _EXPIRY_VALUES if pid == PropertyId.MESSAGE_EXPIRY_INTERVAL else _U32_VALUES
                )
                value = struct.pack(">I", rng.choice(values))
            elif ptype == PropertyType.VARIABLE_BYTE_INT:
                value = rng.choice((b"\x00", b"\x01", b"\x80\x00", b"\xff\xff\xff\x7f", b"\xff"))
            elif ptype == PropertyType.UTF8_PAIR:
                value = utf8(rng.choice(TEXT)) + utf8(rng.choice(TEXT))
            elif rng.random() < 0.8:
                value = utf8(rng.choice(TEXT))
            else:  # bad UTF-8, U+0000, a surrogate, a length past the end
                value = rng.choice((b"\x00\x01\xff", b"\x00\x01\x00", b"\x00\x03\xed\xa0\x80"))
                value = rng.choice((value, b"\xff\xff"))
            if rng.random() < 0.05:
                value = value[: rng.randrange(len(value) + 1)]
            parts.append(bytes((pid,)) + value)
        body = b"".join(parts)
        length = len(body)
        if rng.random() < 0.1:
            length = max(0, length + rng.choice((-2, -1, 1, 2, 1000)))
        return encode_varint(length) + body

    def raw_v5_packet(self) -> bytes:
        """A v5 packet of a random client type around a ``raw_properties`` block."""
        rng = self.rng
        props = self.raw_properties()
        kind = rng.randrange(6)
        if kind == 0:
            qos = rng.randrange(3)
            pid = struct.pack(">H", self.packet_id()) if qos else b""
            body = utf8(rng.choice(TOPICS)) + pid + props + self.payload()
            return frame(0x30 | qos << 1, body)
        if kind == 1:
            ptype = rng.choice((PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBCOMP))
            first = ptype << 4
            if rng.random() < 0.3:
                first = 0x62  # PUBREL
            return frame(first, struct.pack(">HB", self.packet_id(), 0) + props)
        if kind == 2:
            sub = utf8(rng.choice(FILTERS)) + bytes((rng.randrange(3),))
            return frame(0x82, struct.pack(">H", self.packet_id()) + props + sub)
        if kind == 3:
            return frame(0xA2, struct.pack(">H", self.packet_id()) + props + utf8("fuzz/#"))
        if kind == 4:
            return frame(0xE0, bytes((rng.choice(_DISCONNECT_CODES),)) + props)
        return frame(0xF0, bytes((rng.choice(_AUTH_CODES),)) + props)


# -- damage ----------------------------------------------------------------------


def _flip_bits(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randrange(1, 9)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _set_bytes(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randrange(1, 4)):
        data[rng.randrange(len(data))] = rng.choice(
            (0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256))
        )


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data)) :]


def _insert(rng: random.Random, data: bytearray) -> None:
    i = rng.randrange(len(data) + 1)
    data[i:i] = rng.randbytes(rng.randrange(1, 32))


def _delete(rng: random.Random, data: bytearray) -> None:
    i = rng.randrange(len(data))
    del data[i : i + rng.randrange(1, 16)]


def _duplicate(rng: random.Random, data: bytearray) -> None:
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randrange(1, 64))
    data[j:j] = data[i:j] * rng.randrange(1, 4)


def _packet_type(rng: random.Random, data: bytearray) -> None:
    """Another type nibble, other flags, or both."""
    r = rng.randrange(3)
    if r == 0:
        data[0] = (rng.randrange(16) << 4) | (data[0] & 0x0F)
    elif r == 1:
        data[0] = (data[0] & 0xF0) | rng.randrange(16)
    else:
        data[0] = rng.randrange(256)


def _header_end(data: bytearray) -> int:
    """Offset just past the remaining-length varint (at most 4 bytes read)."""
    i = 1
    while i < len(data) and i < 5:
        i += 1
        if data[i - 1] < 0x80:
            break
    return i


def _remaining_length(rng: random.Random, data: bytearray) -> None:
    """Replace the remaining length: off by a little, huge, non-minimal, too long."""
    end = _header_end(data)
    body = len(data) - end
    r = rng.randrange(6)
    if r == 0:
        new = encode_varint(max(0, min(268435455, body + rng.choice((-3, -1, 1, 2, 100)))))
    elif r == 1:
        new = encode_varint(rng.randrange(16 * 1024 * 1024 - 1024, 268435456))
    elif r == 2:
        new = b"\xff\xff\xff\x7f"  # 268,435,455: the largest there is
    elif r == 3:
        new = encode_varint(body)[:-1] + bytes((encode_varint(body)[-1] | 0x80,)) + b"\x00"
    elif r == 4:
        new = b"\xff\xff\xff\xff\x01"  # five bytes
    else:
        new = b"\x80" * rng.randrange(1, 4)  # runs into the body
    data[1:end] = new


def _length_prefix(rng: random.Random, data: bytearray) -> None:
    """Overwrite two bytes of the body as if they were a string length."""
    end = _header_end(data)
    if len(data) - end < 2:
        return
    i = rng.randrange(end, len(data) - 1)
    data[i : i + 2] = struct.pack(">H", rng.choice((0, 1, len(data) - i, 0x7FFF, 0xFFFF)))


_MUTATIONS = (
    _flip_bits,
    _set_bytes,
    _truncate,
    _insert,
    _delete,
    _duplicate,
    _packet_type,
    _remaining_length,
    _length_prefix,
)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` damaged by one to three random mutations."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not out:
            out += rng.randbytes(rng.randrange(1, 8))
        rng.choice(_MUTATIONS)(rng, out)
    return bytes(out)


VERSIONS = (MQTT5, MQTT311)
