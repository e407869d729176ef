"""The fan-out path of the encoder: one message, many receivers.

A message published to N subscribers differs between receivers only in a few
header fields: QoS, RETAIN, DUP, the packet identifier, and (v5) the
subscription identifiers, topic alias and remaining message expiry. A
:class:`PublishTemplate` encodes the topic, the properties every receiver gets
and the payload once; ``encode`` then builds just the small head.

Receivers that get identical bytes (same version, QoS 0, no per-receiver
properties) share one encoded packet through a small cache on the template, so
a QoS 0 fan-out to a thousand subscribers encodes once and allocates once.
"""

from __future__ import annotations

from .codec import encode_properties, encode_varint
from .packets import Properties

_EXPIRY = 0x02
_SUB_ID = 0x0B
_ALIAS = 0x23


def _common_properties(props: Properties | None) -> bytes:
    """The property bytes (without length prefix) that every receiver gets.

    Topic alias and subscription identifiers are per connection and message
    expiry is rewritten on each forward [MQTT-3.3.2-6], so they are left out.
    """
    if props is None or (
        props.user_properties is None
        and props.correlation_data is None
        and props.response_topic is None
        and props.content_type is None
        and props.payload_format_indicator is None
    ):
        return b""
    common = Properties(
        payload_format_indicator=props.payload_format_indicator,
        content_type=props.content_type,
        response_topic=props.response_topic,
        correlation_data=props.correlation_data,
        user_properties=props.user_properties,
    )
    encoded = encode_properties(common)
    # strip the variable byte integer length prefix
    i = 0
    while encoded[i] & 0x80:
        i += 1
    return encoded[i + 1 :]


class PublishTemplate:
    __slots__ = ("topic", "topic_field", "payload", "common", "_cache")

    def __init__(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        self.topic = topic
        raw = topic.encode()
        self.topic_field = len(raw).to_bytes(2, "big") + raw
        self.payload = payload
        self.common = _common_properties(properties)
        self._cache: dict[int, bytes] = {}

    def size(self, version: int, qos: int) -> int:
        """An upper bound of the encoded size, for the receiver's Maximum Packet Size."""
        n = len(self.topic_field) + len(self.payload) + (2 if qos else 0)
        if version == 5:
            n += len(self.common) + 4 + 5 + 3 + 5 * 4
        return n + 5

    def encode_simple(self, version: int, qos0_retain: bool) -> bytes:
        """The shared QoS 0 encoding with no per-receiver properties."""
        key = version * 2 + qos0_retain
        cached = self._cache.get(key)
        if cached is None:
            cached = self.encode(version, 0, qos0_retain, False, 0, None, 0, True, None)
            self._cache[key] = cached
        return cached

    def encode(
        self,
        version: int,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        subscription_ids: list[int] | None,
        alias: int,
        send_topic: bool,
        expiry: int | None,
    ) -> bytes:
        topic_field = self.topic_field if send_topic else b"\x00\x00"
        if version == 5:
            extra = bytearray()
            if expiry is not None:
                extra.append(_EXPIRY)
                extra += expiry.to_bytes(4, "big")
            if subscription_ids:
                for sid in subscription_ids:
                    extra.append(_SUB_ID)
                    extra += encode_varint(sid)
            if alias:
                extra.append(_ALIAS)
                extra += alias.to_bytes(2, "big")
            props_len = len(extra) + len(self.common)
            props = encode_varint(props_len) + bytes(extra) + self.common
        else:
            props = b""
        pid = packet_id.to_bytes(2, "big") if qos else b""
        remaining = len(topic_field) + len(pid) + len(props) + len(self.payload)
        first = 0x30 | (dup << 3) | (qos << 1) | retain
        return b"".join(
            (
                bytes((first,)),
                encode_varint(remaining),
                topic_field,
                pid,
                props,
                self.payload,
            )
        )
