"""MQTT 5.0 and 3.1.1 wire codec: bytes to packets and back, without I/O.

Theory of operation
-------------------
``Decoder.feed(data)`` takes whatever the transport delivered and returns
every packet that is now complete. Internally there is one ``bytearray``
holding at most one partial packet, and an offset walk over the bytes at
hand:

* Fast path: when nothing is buffered, the walk runs straight over ``data``
  and only the incomplete tail (if any) is copied into the buffer. A buffered
  fragment of a fixed header (at most 4 bytes) is simply joined to ``data``
  first.
* Slow path: a packet whose fixed header has been read is pending. The chunk
  is appended to the buffer; while the packet is still incomplete ``feed``
  returns at once without re-parsing. Otherwise the walk runs over a
  ``memoryview`` of the buffer and the consumed prefix is deleted once.

The size limit is enforced as soon as a fixed header is complete, so an
oversized body is never buffered. Any error raises one of the typed errors
from ``shardmq.errors`` carrying its reason code; the decoder is then
unusable and the caller closes the connection (packets that preceded the bad
one in the same chunk are not returned).

``encode(packet, version)`` builds a complete packet. For 3.1.1 it drops
everything the version does not carry (properties, ack reason codes) and
maps CONNACK/SUBACK codes to their 3.1.1 forms.

The PUBLISH decode branch is the hot path: it is kept flat, with local
variables and no helper calls unless the packet has properties.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    UnsupportedProtocolVersion,
)
from .constants import (
    CONNACK_V5_TO_311,
    MAX_PACKET_SIZE_LIMIT,
    MAX_REMAINING_LENGTH,
    MQTT5,
    MQTT311,
    MULTI_VALUED,
    PROPERTY_TABLE,
    WILL,
    ConnackCode311,
    PacketType,
    PropertyId,
    PropertyType,
    ReasonCode,
)
from .packets import (
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
from .topics import is_valid_topic_filter

__all__ = [
    "Decoder",
    "decode_varint",
    "encode",
    "encode_binary",
    "encode_properties",
    "encode_string",
    "encode_varint",
]

Buffer = bytes | bytearray | memoryview

_pack_u16 = struct.Struct(">H").pack
_pack_u32 = struct.Struct(">I").pack

_MALFORMED = ReasonCode.MALFORMED_PACKET
_TOPIC_NAME_INVALID = ReasonCode.TOPIC_NAME_INVALID

# -- primitives --------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (spec 1.5.5), minimal length."""
    if value < 0 or value > MAX_REMAINING_LENGTH:
        raise ValueError(f"variable byte integer out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _varint(buf: Buffer, p: int, end: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer from ``buf[p:end]``; return (value, new p)."""
    value = 0
    shift = 0
    while True:
        if p >= end:
            raise MalformedPacket(_MALFORMED, "truncated variable byte integer")
        b = buf[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and shift:
                # [MQTT-1.5.5-1] the encoded value MUST use the minimum number of bytes
                raise MalformedPacket(_MALFORMED, "non-minimal variable byte integer")
            return value, p
        shift += 7
        if shift > 21:
            raise MalformedPacket(_MALFORMED, "variable byte integer longer than 4 bytes")


def decode_varint(buf: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``offset``; return (value, new offset).

    Raises MalformedPacket when it is longer than 4 bytes, not minimally
    encoded [MQTT-1.5.5-1] or runs past the end of ``buf``.
    """
    return _varint(buf, offset, len(buf))


def encode_string(s: str) -> bytes:
    """A UTF-8 Encoded String (spec 1.5.4): 2-byte length then the bytes."""
    data = s.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return _pack_u16(len(data)) + data


def encode_binary(b: bytes) -> bytes:
    """Binary Data (spec 1.5.6): 2-byte length then the bytes."""
    if len(b) > 0xFFFF:
        raise ValueError("binary data longer than 65535 bytes")
    return _pack_u16(len(b)) + bytes(b)


def _string(buf: Buffer, p: int, end: int) -> tuple[str, int]:
    if end - p < 2:
        raise MalformedPacket(_MALFORMED, "truncated string length")
    q = p + 2 + ((buf[p] << 8) | buf[p + 1])
    if q > end:
        raise MalformedPacket(_MALFORMED, "string runs past the packet")
    try:
        # Python's strict UTF-8 codec rejects ill-formed sequences, overlong
        # forms and encoded surrogates U+D800..U+DFFF [MQTT-1.5.4-1].
        s = str(buf[p + 2 : q], "utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(_MALFORMED, "invalid UTF-8 [MQTT-1.5.4-1]") from None
    if "\x00" in s:
        raise MalformedPacket(_MALFORMED, "U+0000 in a string [MQTT-1.5.4-2]")
    return s, q


def _binary(buf: Buffer, p: int, end: int) -> tuple[bytes, int]:
    if end - p < 2:
        raise MalformedPacket(_MALFORMED, "truncated binary length")
    q = p + 2 + ((buf[p] << 8) | buf[p + 1])
    if q > end:
        raise MalformedPacket(_MALFORMED, "binary data runs past the packet")
    return bytes(buf[p + 2 : q]), q


def _u16(buf: Buffer, p: int, end: int) -> int:
    if end - p < 2:
        raise MalformedPacket(_MALFORMED, "truncated two byte integer")
    return (buf[p] << 8) | buf[p + 1]


def _check_response_topic(topic: str) -> None:
    """A Response Topic is a topic name: not empty, no wildcards [MQTT-3.3.2-14]."""
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolViolation(reason_string="response topic is not a topic name [MQTT-3.3.2-14]")


def _malformed_filter(topic_filter: str) -> MalformedPacket:
    """A filter breaking the rules of 4.7.1 / 4.7.3 / 4.8.2 makes its SUBSCRIBE or
    UNSUBSCRIBE a Malformed Packet ([MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1],
    [MQTT-4.8.2-1], [MQTT-4.8.2-2]; 3.1.1 [MQTT-4.8.0-1]): v5 gets DISCONNECT
    0x81, 3.1.1 is closed, as Mosquitto and EMQX do."""
    shown = topic_filter if len(topic_filter) <= 64 else topic_filter[:64] + "..."
    return MalformedPacket(_MALFORMED, f"malformed topic filter {shown!r}")


def _packet_id(buf: Buffer, p: int, end: int) -> int:
    pid = _u16(buf, p, end)
    if pid == 0:
        raise ProtocolViolation(reason_string="packet identifier 0 [MQTT-2.2.1-3]")
    return pid


# -- properties --------------------------------------------------------------

_T_BYTE = int(PropertyType.BYTE)
_T_U16 = int(PropertyType.TWO_BYTE_INT)
_T_U32 = int(PropertyType.FOUR_BYTE_INT)
_T_VARINT = int(PropertyType.VARIABLE_BYTE_INT)
_T_STRING = int(PropertyType.UTF8_STRING)
_T_BINARY = int(PropertyType.BINARY)
_T_PAIR = int(PropertyType.UTF8_PAIR)

#: property id -> (attribute, type, allowed packet slots, may repeat)
_PROPS: dict[int, tuple[str, int, frozenset[int], bool]] = {
    pid: (name, int(ptype), allowed, pid in MULTI_VALUED)
    for pid, (name, ptype, allowed) in PROPERTY_TABLE.items()
}
#: encode order: ascending identifier
_ENCODE_ORDER: tuple[tuple[int, str, int], ...] = tuple(
    (pid, name, int(ptype)) for pid, (name, ptype, _allowed) in sorted(PROPERTY_TABLE.items())
)

#: Byte properties whose only legal values are 0 and 1 (spec 3.1.2.11, 3.2.2.3).
#: The Payload Format Indicator is not among them: a receiver MAY refuse other
#: values [MQTT-3.3.2-4] (wording "MAY"), and Mosquitto and EMQX forward them
#: unaltered, so we do too.
_BOOLEAN_PROPS = frozenset(
    {
        PropertyId.REQUEST_PROBLEM_INFORMATION,
        PropertyId.REQUEST_RESPONSE_INFORMATION,
        PropertyId.MAXIMUM_QOS,
        PropertyId.RETAIN_AVAILABLE,
        PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE,
        PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        PropertyId.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)


def _properties(buf: Buffer, p: int, end: int, slot: int) -> tuple[Properties, int]:
    """Decode a property block (length prefix included) for packet ``slot``."""
    length, p = _varint(buf, p, end)
    pend = p + length
    if pend > end:
        raise MalformedPacket(_MALFORMED, "property length runs past the packet")
    props = _new_properties()
    while p < pend:
        pid = buf[p]
        p += 1
        spec = _PROPS.get(pid)
        if spec is None:
            # Identifiers are varints but every defined one fits in 7 bits.
            raise MalformedPacket(_MALFORMED, f"unknown property 0x{pid:02x}")
        name, ptype, allowed, multi = spec
        if slot not in allowed:
            # [2.2.2.2] an Identifier not valid for its packet type is a Malformed Packet
            raise MalformedPacket(_MALFORMED, f"property 0x{pid:02x} not allowed here")
        value: object
        if ptype == _T_BYTE:
            if p >= pend:
                raise MalformedPacket(_MALFORMED, "truncated property")
            value = buf[p]
            p += 1
            if pid in _BOOLEAN_PROPS and value > 1:
                raise ProtocolViolation(reason_string=f"property 0x{pid:02x} must be 0 or 1")
        elif ptype == _T_U16:
            if pend - p < 2:
                raise MalformedPacket(_MALFORMED, "truncated property")
            value = (buf[p] << 8) | buf[p + 1]
            p += 2
            if value == 0:
                if pid == PropertyId.TOPIC_ALIAS:
                    # [MQTT-3.3.2-8] a Topic Alias of 0 is not permitted
                    raise ProtocolViolation(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias 0")
                if pid == PropertyId.RECEIVE_MAXIMUM:
                    raise ProtocolViolation(reason_string="receive maximum 0")
        elif ptype == _T_U32:
            if pend - p < 4:
                raise MalformedPacket(_MALFORMED, "truncated property")
            value = int.from_bytes(buf[p : p + 4], "big")
            p += 4
            if value == 0 and pid == PropertyId.MAXIMUM_PACKET_SIZE:
                raise ProtocolViolation(reason_string="maximum packet size 0")
        elif ptype == _T_STRING:
            value, p = _string(buf, p, pend)
        elif ptype == _T_BINARY:
            value, p = _binary(buf, p, pend)
        elif ptype == _T_VARINT:
            # Only Subscription Identifier; its range is 1..268,435,455, the
            # upper bound being what a 4-byte varint can hold.
            value, p = _varint(buf, p, pend)
            if value == 0:
                raise ProtocolViolation(reason_string="subscription identifier 0")
        else:  # _T_PAIR
            key, p = _string(buf, p, pend)
            val, p = _string(buf, p, pend)
            value = (key, val)
        current = getattr(props, name)
        if multi:
            if current is None:
                setattr(props, name, [value])
            else:
                current.append(value)
        elif current is not None:
            # [2.2.2.2] it is a Protocol Error to include a property more than once
            raise ProtocolViolation(reason_string=f"duplicate property 0x{pid:02x}")
        else:
            setattr(props, name, value)
    return props, p


#: ``Properties()`` with straight-line slot stores (see packets.py).
_new_properties = Properties


def _properties_empty(props: Properties) -> bool:
    return not props


def encode_properties(props: Properties | None) -> bytes:
    """A property block with its length prefix; ``b"\\x00"`` when nothing is set.

    User properties are written in list order, repeated keys included; each
    subscription identifier becomes its own 0x0B property.
    """
    if props is None or _properties_empty(props):
        return b"\x00"
    parts: list[bytes] = []
    for pid, name, ptype in _ENCODE_ORDER:
        value = getattr(props, name)
        if value is None:
            continue
        if ptype == _T_BYTE:
            parts.append(bytes((pid, value)))
        elif ptype == _T_U16:
            parts.append(bytes((pid,)) + _pack_u16(value))
        elif ptype == _T_U32:
            parts.append(bytes((pid,)) + _pack_u32(value))
        elif ptype == _T_STRING:
            parts.append(bytes((pid,)) + encode_string(value))
        elif ptype == _T_BINARY:
            parts.append(bytes((pid,)) + encode_binary(value))
        elif ptype == _T_VARINT:
            for ident in value:
                parts.append(bytes((pid,)) + encode_varint(ident))
        else:
            for key, val in value:
                parts.append(bytes((pid,)) + encode_string(key) + encode_string(val))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


# -- reason codes each packet may carry (spec 3.x.2.1 tables) -----------------

_R = ReasonCode
_CONNACK_CODES: frozenset[int] = frozenset(
    {
        _R.SUCCESS,
        *range(0x80, 0x8B),
        _R.BAD_AUTHENTICATION_METHOD,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_TOO_LARGE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
        _R.RETAIN_NOT_SUPPORTED,
        _R.QOS_NOT_SUPPORTED,
        _R.USE_ANOTHER_SERVER,
        _R.SERVER_MOVED,
        _R.CONNECTION_RATE_EXCEEDED,
    }
)
_PUBACK_CODES: frozenset[int] = frozenset(
    {
        _R.SUCCESS,
        _R.NO_MATCHING_SUBSCRIBERS,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
    }
)
_PUBREL_CODES: frozenset[int] = frozenset({_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND})
_SUBACK_CODES: frozenset[int] = frozenset(
    {
        _R.GRANTED_QOS_0,
        _R.GRANTED_QOS_1,
        _R.GRANTED_QOS_2,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_FILTER_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)
_UNSUBACK_CODES: frozenset[int] = frozenset(
    {
        _R.SUCCESS,
        _R.NO_SUBSCRIPTION_EXISTED,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_FILTER_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
    }
)
_DISCONNECT_CODES: frozenset[int] = frozenset(
    {
        _R.NORMAL_DISCONNECTION,
        _R.DISCONNECT_WITH_WILL_MESSAGE,
        *range(0x80, 0x84),
        _R.NOT_AUTHORIZED,
        _R.SERVER_BUSY,
        _R.SERVER_SHUTTING_DOWN,
        *range(0x8D, 0x91),
        *range(0x93, 0xA3),
    }
)
_AUTH_CODES: frozenset[int] = frozenset(
    {_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.RE_AUTHENTICATE}
)
_ACK_CODES: dict[int, frozenset[int]] = {
    PacketType.PUBACK: _PUBACK_CODES,
    PacketType.PUBREC: _PUBACK_CODES,
    PacketType.PUBREL: _PUBREL_CODES,
    PacketType.PUBCOMP: _PUBREL_CODES,
}

_CODES_BY_PACKET: dict[int, frozenset[int]] = {
    PacketType.CONNACK: _CONNACK_CODES,
    PacketType.PUBACK: _PUBACK_CODES,
    PacketType.PUBREC: _PUBACK_CODES,
    PacketType.PUBCOMP: _PUBREL_CODES,
    PacketType.SUBACK: _SUBACK_CODES,
    PacketType.UNSUBACK: _UNSUBACK_CODES,
    PacketType.DISCONNECT: _DISCONNECT_CODES,
}
_REFUSALS = frozenset({_R.BAD_USER_NAME_OR_PASSWORD, _R.BANNED, _R.BAD_AUTHENTICATION_METHOD})


def sendable_code(packet_type: int, code: int) -> int:
    """``code`` if ``packet_type`` may carry it, else the nearest code it may.

    Hooks may raise any reason code; the spec lists which ones each packet
    carries (e.g. 0x8A Banned exists for CONNACK but not DISCONNECT). A
    refusal becomes 0x87 Not authorized, anything else 0x80 Unspecified error.
    """
    allowed = _CODES_BY_PACKET[packet_type]
    if code in allowed:
        return code
    if code in _REFUSALS and _R.NOT_AUTHORIZED in allowed:
        return _R.NOT_AUTHORIZED
    if _R.UNSPECIFIED_ERROR in allowed:
        return _R.UNSPECIFIED_ERROR
    return max(allowed)  # PUBCOMP: 0x92 is its only failure code


#: 3.1.1 CONNACK return code -> the v5 reason code we represent it with
_CONNACK_311_TO_V5: dict[int, int] = {
    ConnackCode311.ACCEPTED: _R.SUCCESS,
    ConnackCode311.UNACCEPTABLE_PROTOCOL_VERSION: _R.UNSUPPORTED_PROTOCOL_VERSION,
    ConnackCode311.IDENTIFIER_REJECTED: _R.CLIENT_IDENTIFIER_NOT_VALID,
    ConnackCode311.SERVER_UNAVAILABLE: _R.SERVER_UNAVAILABLE,
    ConnackCode311.BAD_USER_NAME_OR_PASSWORD: _R.BAD_USER_NAME_OR_PASSWORD,
    ConnackCode311.NOT_AUTHORIZED: _R.NOT_AUTHORIZED,
}


def _check_code(code: int, allowed: frozenset[int], what: str) -> int:
    if code not in allowed:
        raise ProtocolViolation(reason_string=f"reason code 0x{code:02x} not valid in {what}")
    return code


# -- decoder -----------------------------------------------------------------

#: Required fixed-header flags per packet type [MQTT-2.1.3-1]; PUBLISH (3) is
#: checked separately.
_FLAGS = (0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
#: Packets only a server sends; a server receiving one is a Protocol Error.
_SERVER_ONLY = frozenset(
    {PacketType.CONNACK, PacketType.SUBACK, PacketType.UNSUBACK, PacketType.PINGRESP}
)

_PUBLISH = PacketType.PUBLISH
_SUBSCRIBE = PacketType.SUBSCRIBE


class Decoder:
    """Incremental MQTT packet decoder for one connection.

    ``server=True`` (the broker's side) enforces the client-to-server rules:
    the first packet is CONNECT, no second CONNECT, no server-only packets.
    ``version`` starts at 0 and is set from the CONNECT's protocol level the
    moment that byte is read, so a caller handling an error from the rest of
    that CONNECT knows which CONNACK format to answer with. A server-side
    decoder created with a non-zero ``version`` behaves as if CONNECT had
    already been decoded (a connection handed over mid-stream).
    ``server=False`` decodes every packet type and needs ``version`` (or a
    CONNECT) to know the format.

    ``max_packet_size`` (fixed header included) may be changed at any time.
    """

    __slots__ = ("max_packet_size", "server", "version", "_buf", "_need", "_ready")

    def __init__(
        self, max_packet_size: int = MAX_PACKET_SIZE_LIMIT, server: bool = True, version: int = 0
    ) -> None:
        if version not in (0, MQTT311, MQTT5):
            raise ValueError(f"unsupported version {version}")
        self.max_packet_size = max_packet_size
        self.server = server
        self.version = version
        #: bytes of a packet not complete yet (an idle connection holds none)
        self._buf: bytearray | bytes = b""
        #: bytes the pending packet needs (0 when its fixed header is incomplete)
        self._need = 0
        #: True once packets other than CONNECT may be decoded
        self._ready = version != 0

    def feed(self, data: bytes) -> list[Packet]:
        """Buffer ``data`` and return every packet now complete, in order.

        Raises a ``ProtocolViolation`` subclass on bad input; the connection
        must then be closed (with CONNACK/DISCONNECT carrying ``reason_code``
        where the protocol allows).
        """
        out: list[Packet] = []
        buf = self._buf
        if buf:
            assert isinstance(buf, bytearray)
            need = self._need
            if need:
                # A packet whose size is known is pending: collect its body.
                buf += data
                if len(buf) < need:
                    if need > self.max_packet_size:
                        raise PacketTooLarge(reason_string=f"packet of {need} bytes")
                    return out
                view = memoryview(buf)
                try:
                    pos = self._walk(view, out)
                finally:
                    view.release()
                if pos < len(buf):
                    del buf[:pos]
                else:
                    self._buf = b""  # let a large packet's buffer go
                return out
            # Only part of a fixed header (at most 4 bytes) is buffered: join it
            # to the new data and take the fast path, so an oversized packet is
            # refused before any of its body is buffered.
            data = bytes(buf) + data
            self._buf = b""
        if not data:
            return out
        pos = self._walk(data, out)
        if pos < len(data):
            self._buf = bytearray(memoryview(data)[pos:])
        return out

    def _walk(self, view: Buffer, out: list[Packet]) -> int:
        """Decode complete packets from ``view``; return the offset consumed."""
        n = len(view)
        pos = 0
        limit = self.max_packet_size
        self._need = 0
        while n - pos >= 2:
            b0 = view[pos]
            b = view[pos + 1]
            if b < 0x80:
                hdr = 2
                rl = b
            else:
                rl = b & 0x7F
                shift = 7
                i = pos + 2
                while True:
                    if i >= n:
                        return pos
                    b = view[i]
                    i += 1
                    rl |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MalformedPacket(_MALFORMED, "remaining length longer than 4 bytes")
                if b == 0:
                    # [MQTT-1.5.5-1] minimum number of bytes
                    raise MalformedPacket(_MALFORMED, "non-minimal remaining length")
                hdr = i - pos
            total = hdr + rl
            if total > limit:
                raise PacketTooLarge(reason_string=f"packet of {total} bytes")
            if n - pos < total:
                self._need = total
                return pos
            start = pos + hdr
            pos += total
            if b0 >> 4 == 3 and self._ready:
                out.append(self._publish(b0, view, start, pos))
            else:
                out.append(self._other(b0, view, start, pos))
        return pos

    # -- PUBLISH: the hot path ---------------------------------------------

    def _publish(self, b0: int, view: Buffer, p: int, end: int) -> Publish:
        qos = (b0 >> 1) & 3
        if qos == 3:
            raise MalformedPacket(_MALFORMED, "PUBLISH QoS 3 [MQTT-3.3.1-4]")
        if b0 & 8 and not qos:
            raise MalformedPacket(_MALFORMED, "DUP set on QoS 0 [MQTT-3.3.1-2]")
        if end - p < 2:
            raise MalformedPacket(_MALFORMED, "truncated topic name")
        q = p + 2 + ((view[p] << 8) | view[p + 1])
        if q > end:
            raise MalformedPacket(_MALFORMED, "topic name runs past the packet")
        try:
            topic = str(view[p + 2 : q], "utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket(_MALFORMED, "invalid UTF-8 [MQTT-1.5.4-1]") from None
        if "\x00" in topic:
            raise MalformedPacket(_MALFORMED, "U+0000 in topic [MQTT-1.5.4-2]")
        p = q
        packet_id: int | None = None
        if qos:
            if end - p < 2:
                raise MalformedPacket(_MALFORMED, "truncated packet identifier")
            packet_id = (view[p] << 8) | view[p + 1]
            if not packet_id:
                raise ProtocolViolation(reason_string="packet identifier 0 [MQTT-2.2.1-3]")
            p += 2
        if self.version == MQTT5:
            if p >= end:
                raise MalformedPacket(_MALFORMED, "missing property length")
            props: Properties | None = None  # none: the packet makes it if read
            if view[p] == 0:
                p += 1
                if not topic:
                    # spec 3.3.2.1: a zero length Topic Name needs a Topic Alias
                    raise ProtocolViolation(reason_string="empty topic without topic alias")
            else:
                props, p = _properties(view, p, end, _PUBLISH)
                if self.server and props.subscription_identifiers is not None:
                    raise ProtocolViolation(
                        reason_string="subscription identifier from a client [MQTT-3.3.4-6]"
                    )
                if not topic and props.topic_alias is None:
                    raise ProtocolViolation(reason_string="empty topic without topic alias")
                if self.server and props.response_topic is not None:
                    _check_response_topic(props.response_topic)
        else:
            props = None
            if not topic:
                raise ProtocolViolation(_TOPIC_NAME_INVALID, "empty topic name [MQTT-4.7.3-1]")
        if "+" in topic or "#" in topic:
            raise ProtocolViolation(_TOPIC_NAME_INVALID, "wildcard in topic name [MQTT-3.3.2-2]")
        return Publish(topic, bytes(view[p:end]), qos, bool(b0 & 1), bool(b0 & 8), packet_id, props)

    # -- everything else ------------------------------------------------------

    def _other(self, b0: int, view: Buffer, p: int, end: int) -> Packet:
        ptype = b0 >> 4
        if ptype == 0:
            raise MalformedPacket(_MALFORMED, "reserved packet type 0")
        if ptype == PacketType.CONNECT:
            if self._ready and self.server:
                raise ProtocolViolation(reason_string="second CONNECT [MQTT-3.1.0-2]")
        elif not self._ready:
            if self.server:
                raise ProtocolViolation(reason_string="first packet is not CONNECT [MQTT-3.1.0-1]")
            raise ProtocolViolation(reason_string="protocol version unknown: no CONNECT yet")
        elif self.server and ptype in _SERVER_ONLY:
            raise ProtocolViolation(
                reason_string=f"{PacketType(ptype).name} sent to a server (spec 2.1.2)"
            )
        if ptype == PacketType.PUBLISH:
            return self._publish(b0, view, p, end)
        if b0 & 0x0F != _FLAGS[ptype]:
            raise MalformedPacket(_MALFORMED, "invalid fixed header flags [MQTT-2.1.3-1]")
        if ptype == PacketType.AUTH and self.version != MQTT5:
            # Packet type 15 is reserved (forbidden) in 3.1.1 (spec 2.2.1 of 3.1.1).
            raise MalformedPacket(_MALFORMED, "AUTH on a 3.1.1 connection")
        return self._decoders[ptype](self, ptype, view, p, end)

    def _connect(self, _ptype: int, view: Buffer, p: int, end: int) -> Connect:
        name, p = _string(view, p, end)
        if p >= end:
            raise MalformedPacket(_MALFORMED, "truncated CONNECT")
        if name != "MQTT":
            # [MQTT-3.1.2-1]; 3.1's "MQIsdp" lands here too.
            raise UnsupportedProtocolVersion(reason_string=f"protocol name {name!r}")
        level = view[p]
        if level not in (MQTT311, MQTT5):
            raise UnsupportedProtocolVersion(reason_string=f"protocol level {level}")
        self.version = level
        v5 = level == MQTT5
        if end - p < 4:
            raise MalformedPacket(_MALFORMED, "truncated CONNECT")
        flags = view[p + 1]
        keep_alive = (view[p + 2] << 8) | view[p + 3]
        p += 4
        if flags & 0x01:
            raise MalformedPacket(_MALFORMED, "CONNECT reserved flag set [MQTT-3.1.2-3]")
        will_flag = flags & 0x04
        will_qos = (flags >> 3) & 3
        will_retain = bool(flags & 0x20)
        if not will_flag and (will_qos or will_retain):
            raise MalformedPacket(
                _MALFORMED, "will QoS/retain without will flag [MQTT-3.1.2-11, -13]"
            )
        if will_qos == 3:
            raise MalformedPacket(_MALFORMED, "will QoS 3 [MQTT-3.1.2-12]")
        has_password = flags & 0x40
        has_username = flags & 0x80
        if has_password and not has_username and not v5:
            raise MalformedPacket(_MALFORMED, "password without user name [MQTT-3.1.2-22]")
        props = _new_properties()
        if v5:
            props, p = _properties(view, p, end, PacketType.CONNECT)
            if props.authentication_data is not None and props.authentication_method is None:
                raise ProtocolViolation(reason_string="authentication data without method")
        client_id, p = _string(view, p, end)
        will: Will | None = None
        if will_flag:
            will_props = _new_properties()
            if v5:
                will_props, p = _properties(view, p, end, WILL)
            will_topic, p = _string(view, p, end)
            if not will_topic or "+" in will_topic or "#" in will_topic:
                raise ProtocolViolation(_TOPIC_NAME_INVALID, "invalid will topic [MQTT-3.1.3-11]")
            will_payload, p = _binary(view, p, end)
            if self.server and will_props.response_topic is not None:
                # the will becomes a PUBLISH, whose Response Topic is a topic name
                _check_response_topic(will_props.response_topic)
            will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
        username: str | None = None
        password: bytes | None = None
        if has_username:
            username, p = _string(view, p, end)
        if has_password:
            password, p = _binary(view, p, end)
        if p != end:
            raise MalformedPacket(_MALFORMED, "trailing bytes after CONNECT payload")
        self._ready = True
        return Connect(
            client_id=client_id,
            protocol_version=level,
            clean_start=bool(flags & 0x02),
            keep_alive=keep_alive,
            will=will,
            username=username,
            password=password,
            properties=props,
            protocol_name=name,
        )

    def _connack(self, _ptype: int, view: Buffer, p: int, end: int) -> Connack:
        if end - p < 2:
            raise MalformedPacket(_MALFORMED, "truncated CONNACK")
        ack_flags = view[p]
        code = view[p + 1]
        p += 2
        if ack_flags & 0xFE:
            raise MalformedPacket(_MALFORMED, "CONNACK reserved flags set [MQTT-3.2.2-1]")
        props = _new_properties()
        if self.version == MQTT5:
            _check_code(code, _CONNACK_CODES, "CONNACK")
            props, p = _properties(view, p, end, PacketType.CONNACK)
        else:
            mapped = _CONNACK_311_TO_V5.get(code)
            if mapped is None:
                raise ProtocolViolation(reason_string=f"CONNACK return code {code}")
            code = mapped
        if p != end:
            raise MalformedPacket(_MALFORMED, "trailing bytes in CONNACK")
        return Connack(bool(ack_flags), code, props)

    def _ack(self, ptype: int, view: Buffer, p: int, end: int) -> Packet:
        pid = _packet_id(view, p, end)
        p += 2
        code: int = ReasonCode.SUCCESS
        props = None  # made by the packet if anyone reads it
        # [MQTT-3.4.2.1] v5: reason code omitted when the remaining length is 2
        if self.version == MQTT5 and p < end:
            code = _check_code(view[p], _ACK_CODES[ptype], PacketType(ptype).name)
            p += 1
            if p < end:
                props, p = _properties(view, p, end, ptype)
        if p != end:
            raise MalformedPacket(_MALFORMED, "trailing bytes in acknowledgement")
        cls = _ACK_CLASSES[ptype]
        return cls(pid, code, props)

    def _subscribe(self, _ptype: int, view: Buffer, p: int, end: int) -> Subscribe:
        pid = _packet_id(view, p, end)
        p += 2
        v5 = self.version == MQTT5
        props = _new_properties()
        if v5:
            props, p = _properties(view, p, end, _SUBSCRIBE)
            ids = props.subscription_identifiers
            if ids is not None and len(ids) > 1:
                raise ProtocolViolation(reason_string="more than one subscription identifier")
        reserved = 0xC0 if v5 else 0xFC
        subs: list[Subscription] = []
        while p < end:
            topic_filter, p = _string(view, p, end)
            if p >= end:
                raise MalformedPacket(_MALFORMED, "missing subscription options")
            opts = view[p]
            p += 1
            if opts & reserved:
                # [MQTT-3.8.3-5] (v5), [MQTT-3.8.3-4] (3.1.1)
                raise MalformedPacket(_MALFORMED, "subscription options reserved bits set")
            qos = opts & 3
            if qos == 3:
                if v5:
                    # v5 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
                    raise ProtocolViolation(reason_string="subscription QoS 3")
                raise MalformedPacket(_MALFORMED, "subscription QoS 3 [MQTT-3.8.3-4]")
            retain_handling = (opts >> 4) & 3
            if retain_handling == 3:
                raise ProtocolViolation(reason_string="retain handling 3")
            if self.server and not is_valid_topic_filter(topic_filter):
                raise _malformed_filter(topic_filter)
            no_local = bool(opts & 0x04)
            if no_local and topic_filter.startswith("$share/"):
                raise ProtocolViolation(reason_string="no local on a shared subscription")
            subs.append(
                Subscription(topic_filter, qos, no_local, bool(opts & 0x08), retain_handling)
            )
        if not subs:
            raise ProtocolViolation(reason_string="SUBSCRIBE without topic filters [MQTT-3.8.3-2]")
        return Subscribe(pid, subs, props)

    def _suback(self, _ptype: int, view: Buffer, p: int, end: int) -> Suback:
        pid = _packet_id(view, p, end)
        p += 2
        props = _new_properties()
        if self.version == MQTT5:
            props, p = _properties(view, p, end, PacketType.SUBACK)
            allowed = _SUBACK_CODES
        else:
            allowed = _SUBACK_311_CODES
        codes = [_check_code(c, allowed, "SUBACK") for c in bytes(view[p:end])]
        return Suback(pid, codes, props)

    def _unsubscribe(self, _ptype: int, view: Buffer, p: int, end: int) -> Unsubscribe:
        pid = _packet_id(view, p, end)
        p += 2
        props = _new_properties()
        if self.version == MQTT5:
            props, p = _properties(view, p, end, PacketType.UNSUBSCRIBE)
        filters: list[str] = []
        while p < end:
            topic_filter, p = _string(view, p, end)
            if self.server and not is_valid_topic_filter(topic_filter):
                raise _malformed_filter(topic_filter)
            filters.append(topic_filter)
        if not filters:
            raise ProtocolViolation(
                reason_string="UNSUBSCRIBE without topic filters [MQTT-3.10.3-2]"
            )
        return Unsubscribe(pid, filters, props)

    def _unsuback(self, _ptype: int, view: Buffer, p: int, end: int) -> Unsuback:
        pid = _packet_id(view, p, end)
        p += 2
        props = _new_properties()
        codes: list[int] = []
        if self.version == MQTT5:
            props, p = _properties(view, p, end, PacketType.UNSUBACK)
            codes = [_check_code(c, _UNSUBACK_CODES, "UNSUBACK") for c in bytes(view[p:end])]
        elif p != end:
            raise MalformedPacket(_MALFORMED, "trailing bytes in UNSUBACK")
        return Unsuback(pid, codes, props)

    def _ping(self, ptype: int, _view: Buffer, p: int, end: int) -> Packet:
        if p != end:
            raise MalformedPacket(_MALFORMED, "PINGREQ/PINGRESP with a body")
        return Pingreq() if ptype == PacketType.PINGREQ else Pingresp()

    def _disconnect(self, ptype: int, view: Buffer, p: int, end: int) -> Packet:
        code: int = ReasonCode.SUCCESS
        props = _new_properties()
        # v5 3.14.2.1 / 3.15.2.1: remaining length 0 means Success, no properties
        if self.version == MQTT5 and p < end:
            allowed = _DISCONNECT_CODES if ptype == PacketType.DISCONNECT else _AUTH_CODES
            code = _check_code(view[p], allowed, PacketType(ptype).name)
            p += 1
            if p < end:
                props, p = _properties(view, p, end, ptype)
        if p != end:
            raise MalformedPacket(_MALFORMED, "trailing bytes in DISCONNECT/AUTH")
        if ptype == PacketType.DISCONNECT:
            return Disconnect(code, props)
        if props.authentication_data is not None and props.authentication_method is None:
            raise ProtocolViolation(reason_string="authentication data without method")
        return Auth(code, props)

    _decoders: dict[int, Callable[[Decoder, int, Buffer, int, int], Packet]] = {
        PacketType.CONNECT: _connect,
        PacketType.CONNACK: _connack,
        PacketType.PUBACK: _ack,
        PacketType.PUBREC: _ack,
        PacketType.PUBREL: _ack,
        PacketType.PUBCOMP: _ack,
        PacketType.SUBSCRIBE: _subscribe,
        PacketType.SUBACK: _suback,
        PacketType.UNSUBSCRIBE: _unsubscribe,
        PacketType.UNSUBACK: _unsuback,
        PacketType.PINGREQ: _ping,
        PacketType.PINGRESP: _ping,
        PacketType.DISCONNECT: _disconnect,
        PacketType.AUTH: _disconnect,
    }


_ACK_CLASSES: dict[int, type[Puback | Pubrec | Pubrel | Pubcomp]] = {
    PacketType.PUBACK: Puback,
    PacketType.PUBREC: Pubrec,
    PacketType.PUBREL: Pubrel,
    PacketType.PUBCOMP: Pubcomp,
}
_SUBACK_311_CODES: frozenset[int] = frozenset({0x00, 0x01, 0x02, 0x80})

# -- encoder -----------------------------------------------------------------


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    if n > MAX_REMAINING_LENGTH:
        raise ValueError("packet body longer than 268,435,455 bytes")
    if n < 0x80:
        return bytes((first, n)) + body
    return bytes((first,)) + encode_varint(n) + body


def _encode_publish(pkt: Publish, v5: bool) -> bytes:
    qos = pkt.qos
    first = 0x30 | (qos << 1)
    if pkt.dup:
        first |= 0x08
    if pkt.retain:
        first |= 0x01
    parts = [encode_string(pkt.topic)]
    if qos:
        if not pkt.packet_id:
            raise ValueError("QoS > 0 PUBLISH needs a packet identifier")
        parts.append(_pack_u16(pkt.packet_id))
    if v5:
        parts.append(encode_properties(pkt.properties))
    parts.append(pkt.payload)
    return _frame(first, b"".join(parts))


def _encode_connect(pkt: Connect, version: int) -> bytes:
    v5 = version == MQTT5
    will = pkt.will
    flags = 0x02 if pkt.clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if pkt.password is not None:
        flags |= 0x40
    if pkt.username is not None:
        flags |= 0x80
    parts = [encode_string(pkt.protocol_name), bytes((version, flags)), _pack_u16(pkt.keep_alive)]
    if v5:
        parts.append(encode_properties(pkt.properties))
    parts.append(encode_string(pkt.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties))
        parts.append(encode_string(will.topic))
        parts.append(encode_binary(will.payload))
    if pkt.username is not None:
        parts.append(encode_string(pkt.username))
    if pkt.password is not None:
        parts.append(encode_binary(pkt.password))
    return _frame(0x10, b"".join(parts))


def _connack_311_code(code: int) -> int:
    mapped = CONNACK_V5_TO_311.get(code)
    if mapped is not None:
        return mapped
    # No 3.1.1 equivalent: authorisation-flavoured refusals become "not
    # authorized", anything else "server unavailable".
    if code in (ReasonCode.QUOTA_EXCEEDED, ReasonCode.CONNECTION_RATE_EXCEEDED):
        return ConnackCode311.SERVER_UNAVAILABLE
    if code in (ReasonCode.BAD_AUTHENTICATION_METHOD, ReasonCode.BANNED):
        return ConnackCode311.NOT_AUTHORIZED
    return ConnackCode311.SERVER_UNAVAILABLE


def encode(packet: Packet, version: int) -> bytes:
    """Encode ``packet`` for a connection speaking ``version`` (4 or 5).

    Returns the complete packet, fixed header included. Fields the version
    does not carry are ignored. v5 acknowledgements, DISCONNECT and AUTH use
    the short forms when the reason code is 0 and there are no properties.
    """
    if version not in (MQTT311, MQTT5):
        raise ValueError(f"unsupported version {version}")
    v5 = version == MQTT5
    if isinstance(packet, Publish):
        return _encode_publish(packet, v5)
    if isinstance(packet, Puback | Pubrec | Pubrel | Pubcomp):
        first = (packet.packet_type << 4) | (0x02 if isinstance(packet, Pubrel) else 0)
        pid = _pack_u16(packet.packet_id)
        if not v5:
            return bytes((first, 2)) + pid
        code = packet.reason_code
        if packet.properties:
            return _frame(first, pid + bytes((code,)) + encode_properties(packet.properties))
        if code:
            return bytes((first, 3)) + pid + bytes((code,))
        return bytes((first, 2)) + pid
    if isinstance(packet, Connect):
        return _encode_connect(packet, version)
    if isinstance(packet, Connack):
        code = packet.reason_code
        flags = 1 if packet.session_present and code == 0 else 0  # [MQTT-3.2.2-6]
        if not v5:
            return bytes((0x20, 2, flags, _connack_311_code(code)))
        return _frame(0x20, bytes((flags, code)) + encode_properties(packet.properties))
    if isinstance(packet, Subscribe):
        parts = [_pack_u16(packet.packet_id)]
        if v5:
            parts.append(encode_properties(packet.properties))
        for sub in packet.subscriptions:
            opts = sub.qos
            if v5:
                opts |= (
                    (0x04 if sub.no_local else 0)
                    | (0x08 if sub.retain_as_published else 0)
                    | (sub.retain_handling << 4)
                )
            parts.append(encode_string(sub.topic_filter))
            parts.append(bytes((opts,)))
        return _frame(0x82, b"".join(parts))
    if isinstance(packet, Suback):
        head = _pack_u16(packet.packet_id)
        if v5:
            return _frame(
                0x90, head + encode_properties(packet.properties) + bytes(packet.reason_codes)
            )
        # [MQTT-3.9.3-2] 3.1.1 knows only 0x00-0x02 and 0x80
        codes = bytes(c if c <= 2 else 0x80 for c in packet.reason_codes)
        return _frame(0x90, head + codes)
    if isinstance(packet, Unsubscribe):
        parts = [_pack_u16(packet.packet_id)]
        if v5:
            parts.append(encode_properties(packet.properties))
        parts.extend(encode_string(f) for f in packet.topic_filters)
        return _frame(0xA2, b"".join(parts))
    if isinstance(packet, Unsuback):
        head = _pack_u16(packet.packet_id)
        if not v5:
            return bytes((0xB0, 2)) + head
        return _frame(
            0xB0, head + encode_properties(packet.properties) + bytes(packet.reason_codes)
        )
    if isinstance(packet, Pingreq):
        return b"\xc0\x00"
    if isinstance(packet, Pingresp):
        return b"\xd0\x00"
    if isinstance(packet, Disconnect | Auth):
        first = packet.packet_type << 4
        if not v5:
            if isinstance(packet, Auth):
                raise ValueError("AUTH does not exist in MQTT 3.1.1")
            return b"\xe0\x00"
        if packet.properties:
            return _frame(
                first, bytes((packet.reason_code,)) + encode_properties(packet.properties)
            )
        if packet.reason_code:
            return bytes((first, 1, packet.reason_code))
        return bytes((first, 0))
    raise TypeError(f"not a packet: {packet!r}")
