"""Codec round trips and byte-exact encodings.

Every packet type in both versions goes encode -> Decoder.feed -> equal
packet, fed whole, one byte at a time and several packets per chunk split at
arbitrary points.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    UnsupportedProtocolVersion,
)
from shardmq.protocol.codec import (
    Decoder,
    decode_varint,
    encode,
    encode_binary,
    encode_properties,
    encode_string,
    encode_varint,
)
from shardmq.protocol.constants import (
    MQTT5,
    MQTT311,
    PROPERTY_TABLE,
    WILL,
    PacketType,
    PropertyType,
    ReasonCode,
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

# -- strategies ----------------------------------------------------------------

# Strings the protocol can carry: no surrogates [MQTT-1.5.4-1], no U+0000 [MQTT-1.5.4-2].
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
topic_names = text.filter(lambda t: t and "+" not in t and "#" not in t)
packet_ids = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=64)

_R = ReasonCode
CONNACK_CODES = [0x00, *range(0x80, 0x8B), 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C]
CONNACK_CODES += [0x9D, 0x9F]
CONNACK_CODES_311 = [0x00, 0x84, 0x85, 0x88, 0x86, 0x87]  # the v5 codes 3.1.1 maps back to
PUBACK_CODES = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
PUBREL_CODES = [0x00, 0x92]
SUBACK_CODES = [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
UNSUBACK_CODES = [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]
DISCONNECT_CODES = [0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F]
DISCONNECT_CODES += [0x90, *range(0x93, 0xA3)]
AUTH_CODES = [0x00, 0x18, 0x19]

# Repeated keys are likely: keys come from a two-letter alphabet.
user_properties = st.lists(
    st.tuples(st.text(alphabet="ab", max_size=2), text), min_size=1, max_size=5
)


def _value_strategy(pid: int, slot: int) -> st.SearchStrategy[Any]:
    name, ptype, _allowed = PROPERTY_TABLE[pid]
    if ptype == PropertyType.BYTE:
        return st.integers(0, 1)
    if ptype == PropertyType.TWO_BYTE_INT:
        return st.integers(1, 0xFFFF)
    if ptype == PropertyType.FOUR_BYTE_INT:
        return st.integers(1, 0xFFFFFFFF)
    if ptype == PropertyType.VARIABLE_BYTE_INT:
        # several identifiers on a PUBLISH to a client, one on a SUBSCRIBE
        return st.lists(
            st.integers(1, 268_435_455),
            min_size=1,
            max_size=1 if slot == PacketType.SUBSCRIBE else 4,
        )
    if name == "response_topic":
        return topic_names  # a topic name: a server refuses anything else [MQTT-3.3.2-14]
    if ptype == PropertyType.UTF8_STRING:
        return text
    if ptype == PropertyType.BINARY:
        return st.binary(max_size=16)
    assert name == "user_properties"
    return user_properties


@st.composite
def properties(draw: st.DrawFn, slot: int) -> Properties:
    props = Properties()
    for pid, (name, _ptype, allowed) in PROPERTY_TABLE.items():
        if slot in allowed and draw(st.booleans()):
            setattr(props, name, draw(_value_strategy(pid, slot)))
    if props.authentication_data is not None and props.authentication_method is None:
        props.authentication_method = "SCRAM"  # data without a method is a Protocol Error
    return props


def _props(version: int, slot: int) -> st.SearchStrategy[Properties]:
    return properties(slot) if version == MQTT5 else st.just(Properties())


@st.composite
def connects(draw: st.DrawFn, version: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(topic_names),
            draw(payloads),
            draw(st.integers(0, 2)),
            draw(st.booleans()),
            draw(_props(version, WILL)),
        )
    username = draw(st.none() | text)
    password = draw(st.none() | st.binary(max_size=16))
    if version == MQTT311 and username is None:
        password = None  # [MQTT-3.1.2-22]
    return Connect(
        client_id=draw(text),
        protocol_version=version,
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        will=will,
        username=username,
        password=password,
        properties=draw(_props(version, PacketType.CONNECT)),
    )


@st.composite
def connacks(draw: st.DrawFn, version: int) -> Connack:
    code = draw(st.sampled_from(CONNACK_CODES if version == MQTT5 else CONNACK_CODES_311))
    present = draw(st.booleans()) and code == 0
    return Connack(present, code, draw(_props(version, PacketType.CONNACK)))


@st.composite
def publishes(draw: st.DrawFn, version: int) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(_props(version, PacketType.PUBLISH))
    topic = draw(topic_names)
    if version == MQTT5 and props.topic_alias is not None and draw(st.booleans()):
        topic = ""  # an alias may stand in for the topic
    return Publish(
        topic,
        draw(payloads),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None,
        props,
    )


def acks(cls: type[Puback | Pubrec | Pubrel | Pubcomp], version: int) -> st.SearchStrategy[Any]:
    codes = PUBREL_CODES if cls in (Pubrel, Pubcomp) else PUBACK_CODES
    if version == MQTT311:
        return st.builds(cls, packet_ids)
    return st.builds(cls, packet_ids, st.sampled_from(codes), properties(cls.packet_type))


@st.composite
def subscribes(draw: st.DrawFn, version: int) -> Subscribe:
    subs = []
    for _ in range(draw(st.integers(1, 4))):
        topic_filter = draw(text)
        if version == MQTT5:
            no_local = draw(st.booleans()) and not topic_filter.startswith("$share/")
            sub = Subscription(
                topic_filter,
                draw(st.integers(0, 2)),
                no_local,
                draw(st.booleans()),
                draw(st.integers(0, 2)),
            )
        else:
            sub = Subscription(topic_filter, draw(st.integers(0, 2)))
        subs.append(sub)
    return Subscribe(draw(packet_ids), subs, draw(_props(version, PacketType.SUBSCRIBE)))


def subacks(version: int) -> st.SearchStrategy[Suback]:
    codes = SUBACK_CODES if version == MQTT5 else [0x00, 0x01, 0x02, 0x80]
    return st.builds(
        Suback,
        packet_ids,
        st.lists(st.sampled_from(codes), min_size=1, max_size=5),
        _props(version, PacketType.SUBACK),
    )


def unsubscribes(version: int) -> st.SearchStrategy[Unsubscribe]:
    return st.builds(
        Unsubscribe,
        packet_ids,
        st.lists(text, min_size=1, max_size=4),
        _props(version, PacketType.UNSUBSCRIBE),
    )


def unsubacks(version: int) -> st.SearchStrategy[Unsuback]:
    if version == MQTT311:
        return st.builds(Unsuback, packet_ids)
    return st.builds(
        Unsuback,
        packet_ids,
        st.lists(st.sampled_from(UNSUBACK_CODES), max_size=5),
        properties(PacketType.UNSUBACK),
    )


def disconnects(version: int) -> st.SearchStrategy[Disconnect]:
    if version == MQTT311:
        return st.just(Disconnect())
    return st.builds(
        Disconnect, st.sampled_from(DISCONNECT_CODES), properties(PacketType.DISCONNECT)
    )


def auths() -> st.SearchStrategy[Auth]:
    return st.builds(Auth, st.sampled_from(AUTH_CODES), properties(PacketType.AUTH))


def packets(version: int) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [
        connects(version),
        connacks(version),
        publishes(version),
        acks(Puback, version),
        acks(Pubrec, version),
        acks(Pubrel, version),
        acks(Pubcomp, version),
        subscribes(version),
        subacks(version),
        unsubscribes(version),
        unsubacks(version),
        st.just(Pingreq()),
        st.just(Pingresp()),
        disconnects(version),
    ]
    if version == MQTT5:
        options.append(auths())
    return st.one_of(options)


def client_decoder(version: int) -> Decoder:
    """Decodes everything, as a client-side tool does."""
    return Decoder(server=False, version=version)


# -- round trips -----------------------------------------------------------------

versions = pytest.mark.parametrize("version", [MQTT311, MQTT5])


@versions
@settings(max_examples=300)
@given(data=st.data())
def test_roundtrip_whole(version: int, data: st.DataObject) -> None:
    packet = data.draw(packets(version))
    wire = encode(packet, version)
    assert client_decoder(version).feed(wire) == [packet]


@versions
@given(data=st.data())
def test_roundtrip_byte_at_a_time(version: int, data: st.DataObject) -> None:
    packet = data.draw(packets(version))
    wire = encode(packet, version)
    decoder = client_decoder(version)
    out: list[Packet] = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
        if i < len(wire) - 1:
            assert out == []
    assert out == [packet]


@versions
@given(data=st.data())
def test_several_packets_arbitrary_chunks(version: int, data: st.DataObject) -> None:
    sent = data.draw(st.lists(packets(version), min_size=1, max_size=6))
    stream = b"".join(encode(p, version) for p in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = client_decoder(version)
    received: list[Packet] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received += decoder.feed(stream[start:cut])
        start = cut
    assert received == sent


@versions
def test_several_packets_in_one_chunk(version: int) -> None:
    sent: list[Packet] = [
        Publish("a/b", b"one", 0),
        Publish("a/c", b"two", 1, packet_id=1),
        Puback(1),
        Pingreq(),
        Subscribe(2, [Subscription("x/#", 1)]),
        Disconnect(),
    ]
    stream = b"".join(encode(p, version) for p in sent)
    assert client_decoder(version).feed(stream) == sent


@versions
@given(data=st.data())
def test_server_side_session(version: int, data: st.DataObject) -> None:
    """A server decoder takes CONNECT first, then client packets, and learns the version."""
    connect = data.draw(connects(version))
    publish = data.draw(
        publishes(version).filter(lambda p: not p.properties.subscription_identifiers)
    )
    decoder = Decoder()
    assert decoder.version == 0
    assert decoder.feed(encode(connect, version)) == [connect]
    assert decoder.version == version
    assert decoder.feed(encode(publish, version) + encode(Pingreq(), version)) == [
        publish,
        Pingreq(),
    ]


@versions
def test_payload_with_every_byte_value(version: int) -> None:
    payload = bytes(range(256)) * 3
    packet = Publish("bin", payload, 2, packet_id=0xFFFF)
    wire = encode(packet, version)
    for decoder in (client_decoder(version), client_decoder(version)):
        (decoded,) = decoder.feed(wire)
        assert isinstance(decoded, Publish)
        assert type(decoded.payload) is bytes
        assert decoded.payload == payload
    # the slow path (through the buffer) also hands out real bytes
    decoder = client_decoder(version)
    assert decoder.feed(wire[:7]) == []
    (decoded,) = decoder.feed(wire[7:])
    assert isinstance(decoded, Publish)
    assert type(decoded.payload) is bytes and decoded.payload == payload


def test_binary_fields_are_bytes_after_buffering() -> None:
    props = Properties(correlation_data=b"\x00\xff", user_properties=[("k", "v")])
    connect = Connect(
        "c",
        will=Will("w", b"will", 1, False, Properties(correlation_data=b"cd")),
        username="u",
        password=b"pw",
        properties=Properties(authentication_method="m", authentication_data=b"ad"),
    )
    publish = Publish("t", b"p", 1, packet_id=3, properties=props)
    wire = encode(connect, MQTT5) + encode(publish, MQTT5)
    decoder = Decoder()
    out: list[Packet] = []
    for i in range(0, len(wire), 3):
        out += decoder.feed(wire[i : i + 3])
    assert out == [connect, publish]
    got_connect, got_publish = out
    assert isinstance(got_connect, Connect) and isinstance(got_publish, Publish)
    assert got_connect.will is not None
    for value in (
        got_connect.password,
        got_connect.will.payload,
        got_connect.will.properties.correlation_data,
        got_connect.properties.authentication_data,
        got_publish.payload,
        got_publish.properties.correlation_data,
    ):
        assert type(value) is bytes


def test_multiple_subscription_identifiers_and_repeated_user_properties() -> None:
    props = Properties(
        subscription_identifiers=[1, 268_435_455, 128, 1],
        user_properties=[("k", "1"), ("k", "2"), ("a", ""), ("k", "1")],
    )
    packet = Publish("a", b"", 0, properties=props)
    wire = encode(packet, MQTT5)
    (decoded,) = client_decoder(MQTT5).feed(wire)
    assert isinstance(decoded, Publish)
    assert decoded.properties.subscription_identifiers == [1, 268_435_455, 128, 1]
    assert decoded.properties.user_properties == props.user_properties


# -- encodings, byte for byte ------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (Puback(0x1234), b"\x40\x02\x12\x34"),
        (Pubrec(1), b"\x50\x02\x00\x01"),
        (Pubrel(1), b"\x62\x02\x00\x01"),
        (Pubcomp(1), b"\x70\x02\x00\x01"),
        (Puback(1, ReasonCode.NO_MATCHING_SUBSCRIBERS), b"\x40\x03\x00\x01\x10"),
        (Pubrel(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), b"\x62\x03\x00\x01\x92"),
        (
            Puback(1, properties=Properties(reason_string="x")),
            b"\x40\x08\x00\x01\x00\x04\x1f\x00\x01x",
        ),
        (Disconnect(), b"\xe0\x00"),
        (Disconnect(ReasonCode.SESSION_TAKEN_OVER), b"\xe0\x01\x8e"),
        (
            Disconnect(properties=Properties(session_expiry_interval=0)),
            b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00",
        ),
        (Auth(), b"\xf0\x00"),
        (Auth(ReasonCode.CONTINUE_AUTHENTICATION), b"\xf0\x01\x18"),
        (Pingreq(), b"\xc0\x00"),
        (Pingresp(), b"\xd0\x00"),
        (Connack(True), b"\x20\x03\x01\x00\x00"),
        (Suback(5, [0, 1, 0x87]), b"\x90\x06\x00\x05\x00\x00\x01\x87"),
        (Unsuback(5, [0x11]), b"\xb0\x04\x00\x05\x00\x11"),
        (Publish("a/b", b"hi", 0), b"\x30\x08\x00\x03a/b\x00hi"),
        (Publish("t", b"", 1, True, True, 10), b"\x3b\x06\x00\x01t\x00\x0a\x00"),
    ],
)
def test_v5_encodings(packet: Packet, wire: bytes) -> None:
    assert encode(packet, MQTT5) == wire
    assert client_decoder(MQTT5).feed(wire) == [packet]


def test_v5_short_forms_decode() -> None:
    decoder = client_decoder(MQTT5)
    # [MQTT-3.4.2.1] remaining length 2: Success; 3: reason, no properties
    assert decoder.feed(b"\x40\x02\x00\x07") == [Puback(7)]
    assert decoder.feed(b"\x50\x03\x00\x07\x10") == [Pubrec(7, 0x10)]
    assert decoder.feed(b"\xe0\x00") == [Disconnect()]
    assert decoder.feed(b"\xe0\x01\x04") == [Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)]
    assert decoder.feed(b"\xf0\x00") == [Auth()]
    # an explicit empty property block is equivalent
    assert decoder.feed(b"\x70\x04\x00\x07\x00\x00") == [Pubcomp(7)]


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        # 3.1.1 acks never carry reason codes or properties
        (Puback(1, 0x80, Properties(reason_string="no")), b"\x40\x02\x00\x01"),
        (Pubrel(2, 0x92), b"\x62\x02\x00\x02"),
        (Disconnect(0x8E, Properties(reason_string="x")), b"\xe0\x00"),
        (Unsuback(3, [0x11, 0x00]), b"\xb0\x02\x00\x03"),
        # failure codes become 0x80 [MQTT-3.9.3-2]
        (
            Suback(4, [0, 1, 2, 0x80, 0x87, 0x8F, 0xA2]),
            b"\x90\x09\x00\x04\x00\x01\x02\x80\x80\x80\x80",
        ),
        (Connack(True, 0), b"\x20\x02\x01\x00"),
        (Connack(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), b"\x20\x02\x00\x01"),
        (Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID), b"\x20\x02\x00\x02"),
        (Connack(False, ReasonCode.SERVER_BUSY), b"\x20\x02\x00\x03"),
        (Connack(False, ReasonCode.BAD_USER_NAME_OR_PASSWORD), b"\x20\x02\x00\x04"),
        (Connack(False, ReasonCode.NOT_AUTHORIZED), b"\x20\x02\x00\x05"),
        (Connack(False, ReasonCode.BANNED), b"\x20\x02\x00\x05"),
        (Connack(False, ReasonCode.QUOTA_EXCEEDED), b"\x20\x02\x00\x03"),
        (Connack(False, ReasonCode.UNSPECIFIED_ERROR), b"\x20\x02\x00\x03"),
        # a refused CONNACK never claims a session [MQTT-3.2.2-4]
        (Connack(True, ReasonCode.NOT_AUTHORIZED), b"\x20\x02\x00\x05"),
        (
            Publish("a", b"x", 1, packet_id=2, properties=Properties(message_expiry_interval=9)),
            b"\x32\x06\x00\x01a\x00\x02x",
        ),
        (
            Subscribe(1, [Subscription("a", 1, True, True, 2)], Properties(user_properties=[])),
            b"\x82\x06\x00\x01\x00\x01a\x01",
        ),
    ],
)
def test_311_encodings(packet: Packet, wire: bytes) -> None:
    assert encode(packet, MQTT311) == wire


def test_311_connect_bytes() -> None:
    connect = Connect("cid", MQTT311, True, 30, None, "u", b"p")
    wire = encode(connect, MQTT311)
    assert wire == b"\x10\x15\x00\x04MQTT\x04\xc2\x00\x1e\x00\x03cid\x00\x01u\x00\x01p"
    assert Decoder().feed(wire) == [connect]


def test_311_connack_codes_decode_to_v5() -> None:
    decoder = client_decoder(MQTT311)
    assert decoder.feed(b"\x20\x02\x00\x05") == [Connack(False, ReasonCode.NOT_AUTHORIZED)]
    assert decoder.feed(b"\x20\x02\x01\x00") == [Connack(True, ReasonCode.SUCCESS)]


def test_auth_cannot_be_encoded_for_311() -> None:
    with pytest.raises(ValueError):
        encode(Auth(), MQTT311)


def test_encode_rejects_bad_version() -> None:
    with pytest.raises(ValueError):
        encode(Pingreq(), 3)


def test_qos1_publish_without_packet_id_is_refused() -> None:
    with pytest.raises(ValueError):
        encode(Publish("a", b"", 1), MQTT5)


# -- primitives --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_boundaries(value: int, wire: bytes) -> None:
    # spec table 1-1
    assert encode_varint(value) == wire
    assert decode_varint(wire, 0) == (value, len(wire))
    assert decode_varint(b"\xaa" + wire + b"\xbb", 1) == (value, len(wire) + 1)


@given(st.integers(0, 268_435_455))
def test_varint_roundtrip(value: int) -> None:
    wire = encode_varint(value)
    assert decode_varint(memoryview(wire), 0) == (value, len(wire))


@pytest.mark.parametrize("value", [-1, 268_435_456])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x80\x00",  # non-minimal 0 [MQTT-1.5.5-1]
        b"\xff\x80\x00",  # non-minimal 127
        b"\x80\x80\x80\x00",
        b"\xff\xff\xff\xff\x7f",  # five bytes
        b"\x80",  # truncated
        b"",
    ],
)
def test_varint_malformed(wire: bytes) -> None:
    with pytest.raises(MalformedPacket) as info:
        decode_varint(bytearray(wire), 0)
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_string_and_binary() -> None:
    assert encode_string("") == b"\x00\x00"
    assert encode_string("A\u2a6d4") == b"\x00\x05A\xe2\xa9\xad4"
    assert encode_string("\U0002a6d4") == b"\x00\x04\xf0\xaa\x9b\x94"  # spec 1.5.4 example
    assert encode_binary(b"\x00\xff") == b"\x00\x02\x00\xff"
    with pytest.raises(ValueError):
        encode_string("x" * 65536)
    with pytest.raises(ValueError):
        encode_binary(b"x" * 65536)


def test_encode_properties() -> None:
    assert encode_properties(None) == b"\x00"
    assert encode_properties(Properties()) == b"\x00"
    props = Properties(
        user_properties=[("k", "2"), ("k", "1")],
        subscription_identifiers=[5, 300],
        payload_format_indicator=1,
    )
    # ascending identifier order; each subscription identifier its own property;
    # user properties in list order with the repeated key kept
    assert encode_properties(props) == (
        b"\x15\x01\x01\x0b\x05\x0b\xac\x02\x26\x00\x01k\x00\x012\x26\x00\x01k\x00\x011"
    )


# -- decoder behaviour ---------------------------------------------------------------


def test_packet_too_large_from_fixed_header_alone() -> None:
    decoder = Decoder(max_packet_size=1024, server=False, version=MQTT5)
    # PUBLISH, remaining length 268,435,455: only the fixed header is fed
    with pytest.raises(PacketTooLarge) as info:
        decoder.feed(b"\x30\xff\xff\xff\x7f")
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_packet_too_large_header_split_across_feeds() -> None:
    decoder = Decoder(max_packet_size=100, server=False, version=MQTT5)
    assert decoder.feed(b"\x30") == []
    assert decoder.feed(b"\xc8") == []
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\x01")  # remaining length 200: 203 bytes in all


def test_packet_size_limit_counts_the_whole_packet() -> None:
    wire = encode(Publish("a", b"x" * 10, 0), MQTT5)  # 2 + 14 bytes
    assert len(wire) == 16
    assert len(Decoder(max_packet_size=16, server=False, version=MQTT5).feed(wire)) == 1
    with pytest.raises(PacketTooLarge):
        Decoder(max_packet_size=15, server=False, version=MQTT5).feed(wire)


def test_max_packet_size_can_change_between_feeds() -> None:
    wire = encode(Publish("a", b"x" * 200, 0), MQTT5)
    decoder = Decoder(server=False, version=MQTT5)
    assert decoder.feed(wire[:50]) == []
    decoder.max_packet_size = 100
    with pytest.raises(PacketTooLarge):
        decoder.feed(wire[50:60])


def test_first_packet_must_be_connect_and_only_once() -> None:
    with pytest.raises(ProtocolViolation) as info:
        Decoder().feed(encode(Pingreq(), MQTT5))
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR
    decoder = Decoder()
    decoder.feed(encode(Connect("a"), MQTT5))
    with pytest.raises(ProtocolViolation) as info:
        decoder.feed(encode(Connect("a"), MQTT5))  # [MQTT-3.1.0-2]
    assert type(info.value) is ProtocolViolation
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR


@pytest.mark.parametrize("packet", [Connack(), Suback(1, [0]), Unsuback(1, [0]), Pingresp()])
def test_server_refuses_server_only_packets(packet: Packet) -> None:
    decoder = Decoder()
    decoder.feed(encode(Connect("a"), MQTT5))
    with pytest.raises(ProtocolViolation) as info:
        decoder.feed(encode(packet, MQTT5))
    assert type(info.value) is ProtocolViolation


def test_version_is_known_even_when_connect_fails() -> None:
    # level 5, then the reserved CONNECT flag set [MQTT-3.1.2-3]
    decoder = Decoder()
    with pytest.raises(MalformedPacket):
        decoder.feed(b"\x10\x0d\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x00")
    assert decoder.version == MQTT5
    decoder = Decoder()
    with pytest.raises(MalformedPacket):
        decoder.feed(b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00")
    assert decoder.version == MQTT311


def test_server_decoder_with_known_version_skips_connect() -> None:
    decoder = Decoder(version=MQTT5)
    assert decoder.feed(b"\xc0\x00") == [Pingreq()]
    with pytest.raises(ProtocolViolation):
        decoder.feed(encode(Connect("a"), MQTT5))


def test_empty_feed_and_partial_header() -> None:
    decoder = client_decoder(MQTT5)
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x30") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x80") == []
    body = b"\x00\x01a\x00" + b"z" * 124
    assert decoder.feed(b"\x01" + body) == [Publish("a", b"z" * 124)]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    wire = encode(Publish("a", b"pay", 0), MQTT5)
    decoder = client_decoder(MQTT5)
    for chunk in (bytearray(wire), memoryview(wire)):
        (decoded,) = decoder.feed(chunk)  # type: ignore[arg-type]
        assert isinstance(decoded, Publish)
        assert type(decoded.payload) is bytes and decoded.payload == b"pay"


def test_only_the_incomplete_tail_is_buffered() -> None:
    packet = Publish("a", b"x" * 50)
    wire = encode(packet, MQTT5)
    decoder = client_decoder(MQTT5)
    assert decoder.feed(wire * 3 + wire[:10]) == [packet] * 3
    assert len(decoder._buf) == 10
    assert decoder.feed(wire[10:] + wire[:1]) == [packet]
    assert len(decoder._buf) == 1
    assert decoder.feed(wire[1:]) == [packet]
    assert len(decoder._buf) == 0


def test_oversized_body_is_never_buffered() -> None:
    decoder = Decoder(max_packet_size=1000, server=False, version=MQTT5)
    assert decoder.feed(b"\x30\xff") == []  # fixed header still incomplete
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\xff\x7f" + b"\x00" * 4096)
    assert len(decoder._buf) <= 4


def test_unsupported_level_leaves_version_unknown() -> None:
    """The caller answers UnsupportedProtocolVersion in the 3.1.1 format regardless."""
    decoder = Decoder()
    with pytest.raises(UnsupportedProtocolVersion):
        decoder.feed(b"\x10\x0d\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00")
    assert decoder.version == 0


def test_sendable_code_maps_codes_a_packet_cannot_carry() -> None:
    from shardmq.protocol.codec import sendable_code
    from shardmq.protocol.constants import PacketType, ReasonCode

    # 0x8A Banned is a CONNACK code but not a DISCONNECT code
    assert sendable_code(PacketType.CONNACK, ReasonCode.BANNED) == ReasonCode.BANNED
    assert sendable_code(PacketType.DISCONNECT, ReasonCode.BANNED) == ReasonCode.NOT_AUTHORIZED
    assert sendable_code(PacketType.PUBACK, ReasonCode.SERVER_BUSY) == ReasonCode.UNSPECIFIED_ERROR
    assert sendable_code(PacketType.PUBCOMP, ReasonCode.NOT_AUTHORIZED) == 0x92
    assert sendable_code(PacketType.SUBACK, ReasonCode.QUOTA_EXCEEDED) == ReasonCode.QUOTA_EXCEEDED
