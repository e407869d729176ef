"""A corpus of malformed and invalid packets, each refused with the right error and code.

Every entry is hand-built bytes. ``_frame`` only prepends the fixed header
(first byte + remaining length) so the bodies stay readable; framing errors
are written out in full. Each case asserts the exact exception class, its
reason code and a fragment of its message (so it fails for the stated
reason, not some earlier one).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardmq.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    UnsupportedProtocolVersion,
)
from shardmq.protocol.codec import Decoder
from shardmq.protocol.constants import MQTT5, MQTT311
from shardmq.protocol.packets import Publish

MALFORMED = 0x81
PROTOCOL = 0x82
UNSUPPORTED = 0x84
TOPIC_NAME_INVALID = 0x90
TOPIC_ALIAS_INVALID = 0x94


def _frame(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


# CONNECT pieces: protocol name "MQTT", level, flags (clean start), keep alive 60
V5 = b"\x00\x04MQTT\x05"
V4 = b"\x00\x04MQTT\x04"
KA = b"\x00\x3c"
CID = b"\x00\x01c"  # client id "c"
CONNECT5 = _frame(0x10, V5 + b"\x02" + KA + b"\x00" + CID)
CONNECT4 = _frame(0x10, V4 + b"\x02" + KA + CID)


def _connect5(props: bytes = b"\x00", payload: bytes = CID, flags: int = 0x02) -> bytes:
    return _frame(0x10, V5 + bytes((flags,)) + KA + props + payload)


def _decoder(setup: str) -> Decoder:
    """fresh: server, nothing received; v5/v4: server after a CONNECT; c5/c4: client side."""
    if setup == "fresh":
        return Decoder()
    if setup == "v5":
        decoder = Decoder()
        assert len(decoder.feed(CONNECT5)) == 1
        return decoder
    if setup == "v4":
        decoder = Decoder()
        assert len(decoder.feed(CONNECT4)) == 1
        return decoder
    if setup == "c5":
        return Decoder(server=False, version=MQTT5)
    assert setup == "c4"
    return Decoder(server=False, version=MQTT311)


# (id, setup, bytes, exception class, reason code, message fragment)
CORPUS: list[tuple[str, str, bytes, type[Exception], int, str]] = [
    # -- fixed header -------------------------------------------------------------
    # remaining length in 5 bytes; at most 4 are allowed [MQTT-1.5.5-1] (spec 2.1.4)
    ("rl-5-bytes", "v5", b"\x30\xff\xff\xff\xff\x7f", MalformedPacket, MALFORMED, "4 bytes"),
    # PINGREQ with remaining length 0 written as 0x80 0x00: not minimal [MQTT-1.5.5-1]
    ("rl-non-minimal", "v5", b"\xc0\x80\x00", MalformedPacket, MALFORMED, "non-minimal"),
    # packet type 0 is reserved/forbidden (spec 2.1.2)
    ("type-0", "v5", b"\x00\x00", MalformedPacket, MALFORMED, "type 0"),
    # PINGREQ flags must be 0 [MQTT-2.1.3-1]
    ("pingreq-flags", "v5", b"\xc1\x00", MalformedPacket, MALFORMED, "flags"),
    # PUBREL flags must be 0b0010 [MQTT-3.6.1-1]
    ("pubrel-flags", "v5", b"\x60\x02\x00\x01", MalformedPacket, MALFORMED, "flags"),
    # SUBSCRIBE flags must be 0b0010 [MQTT-3.8.1-1]
    (
        "subscribe-flags",
        "v5",
        _frame(0x80, b"\x00\x01\x00\x00\x01a\x00"),
        MalformedPacket,
        MALFORMED,
        "flags",
    ),
    # UNSUBSCRIBE flags must be 0b0010 [MQTT-3.10.1-1]
    (
        "unsubscribe-flags",
        "v4",
        _frame(0xA0, b"\x00\x01\x00\x01a"),
        MalformedPacket,
        MALFORMED,
        "flags",
    ),
    # PUBACK flags must be 0 [MQTT-2.1.3-1]
    ("puback-flags", "v5", b"\x42\x02\x00\x01", MalformedPacket, MALFORMED, "flags"),
    # DISCONNECT flags must be 0 [MQTT-3.14.1-1]
    ("disconnect-flags", "v5", b"\xe1\x00", MalformedPacket, MALFORMED, "flags"),
    # PINGREQ has no variable header or payload (spec 3.12)
    ("pingreq-body", "v5", b"\xc0\x01\x00", MalformedPacket, MALFORMED, "body"),
    # -- connection state -----------------------------------------------------------
    # the first packet must be CONNECT [MQTT-3.1.0-1]
    ("first-not-connect", "fresh", b"\xc0\x00", ProtocolViolation, PROTOCOL, "first packet"),
    (
        "first-publish",
        "fresh",
        _frame(0x30, b"\x00\x01a\x00"),
        ProtocolViolation,
        PROTOCOL,
        "first packet",
    ),
    # a second CONNECT is a Protocol Error [MQTT-3.1.0-2]
    ("second-connect", "v5", CONNECT5, ProtocolViolation, PROTOCOL, "second CONNECT"),
    # packets only a server sends [spec 2.1.2 direction column]
    ("connack-to-server", "v5", b"\x20\x03\x00\x00\x00", ProtocolViolation, PROTOCOL, "server"),
    ("suback-to-server", "v5", b"\x90\x04\x00\x01\x00\x00", ProtocolViolation, PROTOCOL, "server"),
    ("unsuback-to-server", "v4", b"\xb0\x02\x00\x01", ProtocolViolation, PROTOCOL, "server"),
    ("pingresp-to-server", "v4", b"\xd0\x00", ProtocolViolation, PROTOCOL, "server"),
    # -- CONNECT --------------------------------------------------------------------
    # MQTT 3.1 ("MQIsdp", level 3) is not spoken
    (
        "connect-mqisdp",
        "fresh",
        _frame(0x10, b"\x00\x06MQIsdp\x03\x02" + KA + CID),
        UnsupportedProtocolVersion,
        UNSUPPORTED,
        "protocol name",
    ),
    (
        "connect-level-3",
        "fresh",
        _frame(0x10, b"\x00\x04MQTT\x03\x02" + KA + CID),
        UnsupportedProtocolVersion,
        UNSUPPORTED,
        "level 3",
    ),
    (
        "connect-level-6",
        "fresh",
        _frame(0x10, b"\x00\x04MQTT\x06\x02" + KA + b"\x00" + CID),
        UnsupportedProtocolVersion,
        UNSUPPORTED,
        "level 6",
    ),
    # the protocol name is case-sensitive "MQTT" [MQTT-3.1.2-1]
    (
        "connect-name-lowercase",
        "fresh",
        _frame(0x10, b"\x00\x04mqtt\x04\x02" + KA + CID),
        UnsupportedProtocolVersion,
        UNSUPPORTED,
        "protocol name",
    ),
    # reserved connect flag (bit 0) set [MQTT-3.1.2-3]
    (
        "connect-reserved-flag",
        "fresh",
        _connect5(flags=0x03),
        MalformedPacket,
        MALFORMED,
        "reserved flag",
    ),
    # will QoS 1 with the will flag clear [MQTT-3.1.2-11]
    (
        "connect-will-qos-no-will",
        "fresh",
        _connect5(flags=0x0A),
        MalformedPacket,
        MALFORMED,
        "without will flag",
    ),
    # will retain with the will flag clear [MQTT-3.1.2-13]
    (
        "connect-will-retain-no-will",
        "fresh",
        _connect5(flags=0x22),
        MalformedPacket,
        MALFORMED,
        "without will flag",
    ),
    # will QoS 3 [MQTT-3.1.2-12]
    (
        "connect-will-qos-3",
        "fresh",
        _connect5(flags=0x1E, payload=CID + b"\x00\x00\x01w\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "QoS 3",
    ),
    # 3.1.1: password flag without user name flag [MQTT-3.1.2-22]
    (
        "connect-311-password-no-user",
        "fresh",
        _frame(0x10, V4 + b"\x42" + KA + CID + b"\x00\x01p"),
        MalformedPacket,
        MALFORMED,
        "password without user name",
    ),
    # one byte after the last payload field (remaining length too long)
    (
        "connect-trailing-byte",
        "fresh",
        _connect5(payload=CID + b"\x00"),
        MalformedPacket,
        MALFORMED,
        "trailing",
    ),
    # client id length 5 but only 1 byte left (remaining length too short)
    (
        "connect-truncated-client-id",
        "fresh",
        _connect5(payload=b"\x00\x05c"),
        MalformedPacket,
        MALFORMED,
        "runs past",
    ),
    # client id is not UTF-8 (0xC3 0x28) [MQTT-1.5.4-1]
    (
        "client-id-bad-utf8",
        "fresh",
        _connect5(payload=b"\x00\x02\xc3\x28"),
        MalformedPacket,
        MALFORMED,
        "UTF-8",
    ),
    # an encoded surrogate U+D800 [MQTT-1.5.4-1]
    (
        "client-id-surrogate",
        "fresh",
        _connect5(payload=b"\x00\x03\xed\xa0\x80"),
        MalformedPacket,
        MALFORMED,
        "UTF-8",
    ),
    # U+0000 in the client id [MQTT-1.5.4-2]
    (
        "client-id-nul",
        "fresh",
        _connect5(payload=b"\x00\x03a\x00b"),
        MalformedPacket,
        MALFORMED,
        "U+0000",
    ),
    # overlong encoding of U+0000 (0xC0 0x80) is ill-formed UTF-8 [MQTT-1.5.4-1]
    (
        "client-id-overlong-nul",
        "fresh",
        _connect5(payload=b"\x00\x02\xc0\x80"),
        MalformedPacket,
        MALFORMED,
        "UTF-8",
    ),
    # 4-byte sequence above U+10FFFF (0xF4 0x90 0x80 0x80) [MQTT-1.5.4-1]
    (
        "client-id-beyond-unicode",
        "fresh",
        _connect5(payload=b"\x00\x04\xf4\x90\x80\x80"),
        MalformedPacket,
        MALFORMED,
        "UTF-8",
    ),
    # Topic Alias (0x23) is not a CONNECT property (spec 2.2.2.2: Malformed Packet)
    (
        "connect-prop-not-allowed",
        "fresh",
        _connect5(props=b"\x03\x23\x00\x01"),
        MalformedPacket,
        MALFORMED,
        "not allowed",
    ),
    # unknown property identifier 0x7F
    (
        "connect-prop-unknown",
        "fresh",
        _connect5(props=b"\x02\x7f\x00"),
        MalformedPacket,
        MALFORMED,
        "unknown property",
    ),
    # property identifier written as a 2-byte varint (0x91 0x00 would be non-minimal 0x11)
    (
        "connect-prop-id-multibyte",
        "fresh",
        _connect5(props=b"\x06\x91\x00\x00\x00\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "unknown property",
    ),
    # Session Expiry Interval twice (spec 3.1.2.11.2: Protocol Error)
    (
        "connect-prop-duplicate",
        "fresh",
        _connect5(props=b"\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02"),
        ProtocolViolation,
        PROTOCOL,
        "duplicate",
    ),
    # Receive Maximum 0 (spec 3.1.2.11.3: Protocol Error)
    (
        "connect-receive-maximum-0",
        "fresh",
        _connect5(props=b"\x03\x21\x00\x00"),
        ProtocolViolation,
        PROTOCOL,
        "receive maximum",
    ),
    # Maximum Packet Size 0 (spec 3.1.2.11.4: Protocol Error)
    (
        "connect-max-packet-size-0",
        "fresh",
        _connect5(props=b"\x05\x27\x00\x00\x00\x00"),
        ProtocolViolation,
        PROTOCOL,
        "maximum packet size",
    ),
    # Request Problem Information 2 (spec 3.1.2.11.7: Protocol Error)
    (
        "connect-request-problem-2",
        "fresh",
        _connect5(props=b"\x02\x17\x02"),
        ProtocolViolation,
        PROTOCOL,
        "0 or 1",
    ),
    # Request Response Information 2 (spec 3.1.2.11.6: Protocol Error)
    (
        "connect-request-response-2",
        "fresh",
        _connect5(props=b"\x02\x19\x02"),
        ProtocolViolation,
        PROTOCOL,
        "0 or 1",
    ),
    # Authentication Data without Authentication Method (spec 3.1.2.11.10: Protocol Error)
    (
        "connect-auth-data-no-method",
        "fresh",
        _connect5(props=b"\x04\x16\x00\x01x"),
        ProtocolViolation,
        PROTOCOL,
        "authentication data",
    ),
    # property length 6 but only 5 property bytes before the payload ends
    (
        "connect-prop-length-overrun",
        "fresh",
        _connect5(props=b"\x7f\x11\x00\x00\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "property length",
    ),
    # Session Expiry Interval (0x11) is not a will property (spec 3.1.3.2)
    (
        "will-prop-not-allowed",
        "fresh",
        _connect5(flags=0x06, payload=CID + b"\x05\x11\x00\x00\x00\x01\x00\x01w\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "not allowed",
    ),
    # will topic with a wildcard [MQTT-3.1.3-11], [MQTT-3.3.2-2]: CONNACK 0x90
    (
        "will-topic-wildcard",
        "fresh",
        _connect5(flags=0x06, payload=CID + b"\x00\x00\x03a/#\x00\x00"),
        ProtocolViolation,
        TOPIC_NAME_INVALID,
        "will topic",
    ),
    # -- PUBLISH ----------------------------------------------------------------------
    # QoS 3 [MQTT-3.3.1-4]
    (
        "publish-qos-3",
        "v5",
        _frame(0x36, b"\x00\x01a\x00\x01\x00"),
        MalformedPacket,
        MALFORMED,
        "QoS 3",
    ),
    # DUP on a QoS 0 message [MQTT-3.3.1-2]
    ("publish-dup-qos-0", "v5", _frame(0x38, b"\x00\x01a\x00"), MalformedPacket, MALFORMED, "DUP"),
    # wildcards in a topic name [MQTT-3.3.2-2]
    (
        "publish-plus",
        "v5",
        _frame(0x30, b"\x00\x03a/+\x00"),
        ProtocolViolation,
        TOPIC_NAME_INVALID,
        "wildcard",
    ),
    (
        "publish-hash-311",
        "v4",
        _frame(0x30, b"\x00\x03a/#"),
        ProtocolViolation,
        TOPIC_NAME_INVALID,
        "wildcard",
    ),
    # 3.1.1: an empty topic name is invalid [MQTT-4.7.3-1]
    (
        "publish-empty-topic-311",
        "v4",
        _frame(0x30, b"\x00\x00hello"),
        ProtocolViolation,
        TOPIC_NAME_INVALID,
        "empty topic",
    ),
    # v5: empty topic without a Topic Alias is a Protocol Error (spec 3.3.2.1)
    (
        "publish-empty-topic-no-alias",
        "v5",
        _frame(0x30, b"\x00\x00\x00hi"),
        ProtocolViolation,
        PROTOCOL,
        "topic alias",
    ),
    (
        "publish-empty-topic-props-no-alias",
        "v5",
        _frame(0x30, b"\x00\x00\x02\x01\x01hi"),
        ProtocolViolation,
        PROTOCOL,
        "topic alias",
    ),
    # packet identifier 0 on QoS 1 [MQTT-2.2.1-3]
    (
        "publish-packet-id-0",
        "v5",
        _frame(0x32, b"\x00\x01a\x00\x00\x00"),
        ProtocolViolation,
        PROTOCOL,
        "packet identifier 0",
    ),
    # QoS 1 without room for the packet identifier
    (
        "publish-missing-packet-id",
        "v4",
        _frame(0x32, b"\x00\x01a\x00"),
        MalformedPacket,
        MALFORMED,
        "packet identifier",
    ),
    # topic length 9 in a 4-byte body
    (
        "publish-topic-overrun",
        "v5",
        _frame(0x30, b"\x00\x09ab"),
        MalformedPacket,
        MALFORMED,
        "runs past",
    ),
    # v5 body ends before the property length
    (
        "publish-missing-prop-length",
        "v5",
        _frame(0x30, b"\x00\x01a"),
        MalformedPacket,
        MALFORMED,
        "property length",
    ),
    # topic is not UTF-8 [MQTT-1.5.4-1]
    (
        "publish-topic-bad-utf8",
        "v5",
        _frame(0x30, b"\x00\x01\xff\x00"),
        MalformedPacket,
        MALFORMED,
        "UTF-8",
    ),
    # U+0000 in a topic name [MQTT-1.5.4-2]
    (
        "publish-topic-nul",
        "v4",
        _frame(0x30, b"\x00\x03a\x00b"),
        MalformedPacket,
        MALFORMED,
        "U+0000",
    ),
    # Topic Alias 0 [MQTT-3.3.2-8]
    (
        "publish-topic-alias-0",
        "v5",
        _frame(0x30, b"\x00\x01a\x03\x23\x00\x00"),
        ProtocolViolation,
        TOPIC_ALIAS_INVALID,
        "topic alias 0",
    ),
    # Response Topic with a wildcard: it is a topic name [MQTT-3.3.2-14]
    (
        "publish-response-topic-wildcard",
        "v5",
        _frame(0x30, b"\x00\x01a\x06\x08\x00\x03r/#"),
        ProtocolViolation,
        PROTOCOL,
        "MQTT-3.3.2-14",
    ),
    (
        "publish-response-topic-plus",
        "v5",
        _frame(0x30, b"\x00\x01a\x06\x08\x00\x03+/r"),
        ProtocolViolation,
        PROTOCOL,
        "response topic",
    ),
    # Message Expiry Interval twice (spec 3.3.2.3.3)
    (
        "publish-prop-duplicate",
        "v5",
        _frame(0x30, b"\x00\x01a\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x01"),
        ProtocolViolation,
        PROTOCOL,
        "duplicate",
    ),
    # a client must not send a Subscription Identifier [MQTT-3.3.4-6]
    (
        "publish-subscription-id-from-client",
        "v5",
        _frame(0x30, b"\x00\x01a\x02\x0b\x01"),
        ProtocolViolation,
        PROTOCOL,
        "subscription identifier",
    ),
    # Session Expiry Interval is not a PUBLISH property (spec 2.2.2.2)
    (
        "publish-prop-not-allowed",
        "v5",
        _frame(0x30, b"\x00\x01a\x05\x11\x00\x00\x00\x01"),
        MalformedPacket,
        MALFORMED,
        "not allowed",
    ),
    # property length 9 but only 2 bytes remain
    (
        "publish-prop-length-overrun",
        "v5",
        _frame(0x30, b"\x00\x01a\x09\x01\x01"),
        MalformedPacket,
        MALFORMED,
        "property length",
    ),
    # property length as a 5-byte varint [MQTT-1.5.5-1]
    (
        "publish-prop-length-5-bytes",
        "v5",
        _frame(0x30, b"\x00\x01a\x80\x80\x80\x80\x01"),
        MalformedPacket,
        MALFORMED,
        "4 bytes",
    ),
    # Message Expiry Interval cut short (2 of 4 bytes)
    (
        "publish-prop-value-truncated",
        "v5",
        _frame(0x30, b"\x00\x01a\x03\x02\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "truncated property",
    ),
    # user property whose value string is cut short
    (
        "publish-user-prop-truncated",
        "v5",
        _frame(0x30, b"\x00\x01a\x06\x26\x00\x01k\x00\x05"),
        MalformedPacket,
        MALFORMED,
        "runs past",
    ),
    # -- acknowledgements ---------------------------------------------------------------
    # packet identifier 0 [MQTT-2.2.1-3]
    (
        "puback-packet-id-0",
        "v5",
        b"\x40\x02\x00\x00",
        ProtocolViolation,
        PROTOCOL,
        "packet identifier 0",
    ),
    # remaining length 1: no room for the packet identifier
    ("puback-truncated", "v5", b"\x40\x01\x00", MalformedPacket, MALFORMED, "truncated"),
    # 3.1.1 PUBACK has exactly 2 bytes (spec 3.4 of 3.1.1)
    ("puback-311-trailing", "v4", b"\x40\x03\x00\x01\x00", MalformedPacket, MALFORMED, "trailing"),
    # 0x05 is not a PUBACK reason code (spec 3.4.2.1)
    (
        "puback-bad-reason",
        "v5",
        b"\x40\x03\x00\x01\x05",
        ProtocolViolation,
        PROTOCOL,
        "reason code",
    ),
    # PUBREL may only carry 0x00 or 0x92 (spec 3.6.2.1)
    (
        "pubrel-bad-reason",
        "v5",
        b"\x62\x03\x00\x01\x10",
        ProtocolViolation,
        PROTOCOL,
        "reason code",
    ),
    # property length 5 with nothing after it
    (
        "pubrec-prop-overrun",
        "v5",
        b"\x50\x04\x00\x01\x00\x05",
        MalformedPacket,
        MALFORMED,
        "property length",
    ),
    # -- SUBSCRIBE --------------------------------------------------------------------
    # no topic filters [MQTT-3.8.3-2]
    (
        "subscribe-empty-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00"),
        ProtocolViolation,
        PROTOCOL,
        "without topic filters",
    ),
    (
        "subscribe-empty-311",
        "v4",
        _frame(0x82, b"\x00\x01"),
        ProtocolViolation,
        PROTOCOL,
        "without topic filters",
    ),
    # packet identifier 0 [MQTT-2.2.1-3]
    (
        "subscribe-packet-id-0",
        "v4",
        _frame(0x82, b"\x00\x00\x00\x01a\x00"),
        ProtocolViolation,
        PROTOCOL,
        "packet identifier 0",
    ),
    # v5 reserved option bits 6-7 [MQTT-3.8.3-5]
    (
        "subscribe-reserved-bits-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x01a\x40"),
        MalformedPacket,
        MALFORMED,
        "reserved bits",
    ),
    # 3.1.1 reserved bits 2-7 [MQTT-3.8.3-4] (no-local is a v5 option)
    (
        "subscribe-reserved-bits-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x01a\x04"),
        MalformedPacket,
        MALFORMED,
        "reserved bits",
    ),
    # v5: "It is a Protocol Error if the Maximum QoS field has the value 3" (3.8.3.1)
    (
        "subscribe-qos-3-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x01a\x03"),
        ProtocolViolation,
        PROTOCOL,
        "QoS 3",
    ),
    # 3.1.1: QoS 3 is malformed [MQTT-3.8.3-4]
    (
        "subscribe-qos-3-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x01a\x03"),
        MalformedPacket,
        MALFORMED,
        "QoS 3",
    ),
    # Retain Handling 3 (3.8.3.1: Protocol Error)
    (
        "subscribe-retain-handling-3",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x01a\x30"),
        ProtocolViolation,
        PROTOCOL,
        "retain handling",
    ),
    # No Local on a shared subscription [MQTT-3.8.3-4]
    (
        "subscribe-no-local-shared",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x0a$share/g/a\x04"),
        ProtocolViolation,
        PROTOCOL,
        "shared",
    ),
    # a filter with no options byte after it
    (
        "subscribe-missing-options",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x01a"),
        MalformedPacket,
        MALFORMED,
        "options",
    ),
    # Subscription Identifier 0 (3.8.2.1.2: Protocol Error)
    (
        "subscribe-subscription-id-0",
        "v5",
        _frame(0x82, b"\x00\x01\x02\x0b\x00\x00\x01a\x00"),
        ProtocolViolation,
        PROTOCOL,
        "subscription identifier 0",
    ),
    # two Subscription Identifiers (3.8.2.1.2: Protocol Error)
    (
        "subscribe-two-subscription-ids",
        "v5",
        _frame(0x82, b"\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00"),
        ProtocolViolation,
        PROTOCOL,
        "more than one",
    ),
    # Subscription Identifier as a non-minimal varint (0x81 0x00) [MQTT-1.5.5-1]
    (
        "subscribe-subscription-id-non-minimal",
        "v5",
        _frame(0x82, b"\x00\x01\x03\x0b\x81\x00\x00\x01a\x00"),
        MalformedPacket,
        MALFORMED,
        "non-minimal",
    ),
    # filter with an encoded surrogate U+DFFF [MQTT-1.5.4-1]
    (
        "subscribe-filter-surrogate",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x03\xed\xbf\xbf\x00"),
        MalformedPacket,
        MALFORMED,
        "UTF-8",
    ),
    # malformed topic filters make the packet malformed: [MQTT-4.7.1-1], [MQTT-4.7.1-2],
    # [MQTT-4.7.3-1], [MQTT-4.8.2-1], [MQTT-4.8.2-2] (3.1.1 [MQTT-4.8.0-1])
    (
        "subscribe-malformed-filter-hash-mid-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x05a/#/b\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-plus-in-level-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x02a+\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-hash-first-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x02#a\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-hash-suffix-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x04a/#x\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-empty-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-share-no-filter-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x08$share/g\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-share-empty-group-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\t$share//f\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-share-wild-group-v5",
        "v5",
        _frame(0x82, b"\x00\x01\x00\x00\x0b$share/a+/f\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-hash-mid-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x05a/#/b\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-plus-in-level-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x02a+\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-hash-first-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x02#a\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-hash-suffix-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x04a/#x\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-empty-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-share-no-filter-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x08$share/g\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-share-empty-group-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\t$share//f\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "subscribe-malformed-filter-share-wild-group-311",
        "v4",
        _frame(0x82, b"\x00\x01\x00\x0b$share/a+/f\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    # -- UNSUBSCRIBE ------------------------------------------------------------------
    # no topic filters [MQTT-3.10.3-2]
    (
        "unsubscribe-empty",
        "v5",
        _frame(0xA2, b"\x00\x01\x00"),
        ProtocolViolation,
        PROTOCOL,
        "without topic filters",
    ),
    # U+0000 in a filter [MQTT-1.5.4-2]
    (
        "unsubscribe-filter-nul",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x01\x00"),
        MalformedPacket,
        MALFORMED,
        "U+0000",
    ),
    # filter length runs past the packet
    (
        "unsubscribe-filter-overrun",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x04ab"),
        MalformedPacket,
        MALFORMED,
        "runs past",
    ),
    (
        "unsubscribe-malformed-filter-hash-mid-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x05a/#/b"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-plus-in-level-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x02a+"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-hash-first-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x02#a"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-hash-suffix-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x04a/#x"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-empty-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-share-no-filter-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x08$share/g"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-share-empty-group-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\t$share//f"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-share-wild-group-v5",
        "v5",
        _frame(0xA2, b"\x00\x01\x00\x00\x0b$share/a+/f"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-hash-mid-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x05a/#/b"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-plus-in-level-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x02a+"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-hash-first-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x02#a"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-hash-suffix-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x04a/#x"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-empty-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x00"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-share-no-filter-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x08$share/g"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-share-empty-group-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\t$share//f"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    (
        "unsubscribe-malformed-filter-share-wild-group-311",
        "v4",
        _frame(0xA2, b"\x00\x01\x00\x0b$share/a+/f"),
        MalformedPacket,
        MALFORMED,
        "malformed topic filter",
    ),
    # -- DISCONNECT and AUTH ------------------------------------------------------------
    # 3.1.1 DISCONNECT has no body (spec 3.14 of 3.1.1)
    ("disconnect-311-body", "v4", b"\xe0\x01\x00", MalformedPacket, MALFORMED, "trailing"),
    # 0x05 is not a DISCONNECT reason code (3.14.2.1)
    ("disconnect-bad-reason", "v5", b"\xe0\x01\x05", ProtocolViolation, PROTOCOL, "reason code"),
    # Topic Alias is not a DISCONNECT property (2.2.2.2)
    (
        "disconnect-prop-not-allowed",
        "v5",
        b"\xe0\x05\x00\x03\x23\x00\x01",
        MalformedPacket,
        MALFORMED,
        "not allowed",
    ),
    # AUTH (type 15) is reserved/forbidden in 3.1.1 (2.2.1 of 3.1.1)
    ("auth-on-311", "v4", b"\xf0\x00", MalformedPacket, MALFORMED, "3.1.1"),
    # 0x01 is not an AUTH reason code (3.15.2.1)
    ("auth-bad-reason", "v5", b"\xf0\x01\x01", ProtocolViolation, PROTOCOL, "reason code"),
    # -- client side (decoding what a server sent) ----------------------------------------
    # CONNACK acknowledge flags bits 7-1 are reserved [MQTT-3.2.2-1]
    (
        "connack-reserved-flags",
        "c5",
        b"\x20\x03\x02\x00\x00",
        MalformedPacket,
        MALFORMED,
        "reserved",
    ),
    # 3.1.1 CONNACK return codes stop at 5 (3.2.2.3 of 3.1.1)
    (
        "connack-311-unknown-code",
        "c4",
        b"\x20\x02\x00\x06",
        ProtocolViolation,
        PROTOCOL,
        "return code",
    ),
    # 3.1.1 SUBACK return codes other than 0x00-0x02 and 0x80 are reserved [MQTT-3.9.3-2]
    (
        "suback-311-bad-code",
        "c4",
        b"\x90\x03\x00\x01\x03",
        ProtocolViolation,
        PROTOCOL,
        "reason code",
    ),
]


@pytest.mark.parametrize(
    ("setup", "wire", "exc_type", "code", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CORPUS],
)
def test_corpus(
    setup: str, wire: bytes, exc_type: type[Exception], code: int, fragment: str
) -> None:
    for chunks in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
        decoder = _decoder(setup)
        with pytest.raises(exc_type) as info:
            for chunk in chunks:
                decoder.feed(chunk)
        assert type(info.value) is exc_type
        assert info.value.reason_code == code  # type: ignore[attr-defined]
        assert fragment.lower() in str(info.value).lower()


def test_corpus_is_large_and_unique() -> None:
    assert len(CORPUS) >= 35
    assert len({case[0] for case in CORPUS}) == len(CORPUS)
    assert len({(case[1], case[2]) for case in CORPUS}) == len(CORPUS)


def test_packet_too_large() -> None:
    decoder = Decoder(max_packet_size=64)
    with pytest.raises(PacketTooLarge) as info:
        decoder.feed(b"\x10\xff\x01")  # CONNECT header announcing 258 bytes
    assert type(info.value) is PacketTooLarge
    assert info.value.reason_code == 0x95


def test_errors_are_protocol_violations() -> None:
    """One except clause in the worker catches everything the decoder raises."""
    for exc_type in (MalformedPacket, PacketTooLarge, UnsupportedProtocolVersion):
        assert issubclass(exc_type, ProtocolViolation)


# -- fuzzing: nothing but typed protocol errors ---------------------------------------

SETUPS = ["fresh", "v5", "v4", "c5", "c4"]


def _feed_all(decoder: Decoder, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            for packet in decoder.feed(chunk):
                for name in ("payload", "password", "correlation_data"):
                    value = getattr(packet, name, None)
                    assert value is None or type(value) is bytes
    except ProtocolViolation as exc:
        assert 0x81 <= exc.reason_code <= 0xA2


@pytest.mark.parametrize("setup", SETUPS)
@given(data=st.binary(max_size=200), cut=st.integers(0, 200))
def test_fuzz_random_bytes(setup: str, data: bytes, cut: int) -> None:
    _feed_all(_decoder(setup), [data[:cut], data[cut:]])


@pytest.mark.parametrize("setup", SETUPS)
@given(
    case=st.sampled_from([c[2] for c in CORPUS] + [CONNECT5, CONNECT4]),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 200),
)
def test_fuzz_mutated_packets(
    setup: str, case: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    mutated = bytearray(case)
    for index, value in flips:
        if mutated:
            mutated[index % len(mutated)] = value
    wire = bytes(mutated[:cut] if cut < len(mutated) and cut % 3 == 0 else mutated)
    _feed_all(_decoder(setup), [wire[:cut], wire[cut:]])


def test_payload_format_indicator_other_values_pass_through() -> None:
    """[MQTT-3.3.2-4] only says a receiver MAY refuse a payload that is not what
    the indicator says; Mosquitto and EMQX forward values other than 0 and 1
    unaltered, and so does the decoder."""
    decoder = _decoder("v5")
    (packet,) = decoder.feed(_frame(0x30, b"\x00\x01a\x02\x01\x02"))
    assert isinstance(packet, Publish)
    assert packet.properties.payload_format_indicator == 2
