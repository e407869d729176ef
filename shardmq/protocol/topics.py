"""Topic names, topic filters and shared subscriptions (spec 4.7 and 4.8.2).

These are the reference rules: the routing trie does its own level-by-level
matching for speed and is tested against ``topic_matches``.
"""

from __future__ import annotations

from ..errors import ProtocolViolation
from .constants import ReasonCode

__all__ = [
    "has_wildcard",
    "is_valid_topic_filter",
    "parse_shared",
    "topic_matches",
    "validate_topic_name",
]

_MAX_BYTES = 0xFFFF
SHARE_PREFIX = "$share/"


def _too_long(s: str) -> bool:
    # A UTF-8 character is at most 4 bytes: only long strings need encoding.
    return len(s) * 4 > _MAX_BYTES and len(s.encode("utf-8")) > _MAX_BYTES


def validate_topic_name(topic: str) -> None:
    """Raise ProtocolViolation(TOPIC_NAME_INVALID) unless ``topic`` can be published to.

    A topic name is at least one character [MQTT-4.7.3-1], has no wildcard
    characters [MQTT-3.3.2-2] [MQTT-4.7.0-1], no U+0000 [MQTT-4.7.3-2] and
    fits in 65,535 bytes of UTF-8 [MQTT-4.7.3-3].
    """
    if not topic:
        raise ProtocolViolation(ReasonCode.TOPIC_NAME_INVALID, "empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolViolation(ReasonCode.TOPIC_NAME_INVALID, "wildcard in topic name")
    if "\x00" in topic:
        raise ProtocolViolation(ReasonCode.TOPIC_NAME_INVALID, "U+0000 in topic name")
    if _too_long(topic):
        raise ProtocolViolation(ReasonCode.TOPIC_NAME_INVALID, "topic name too long")


def _plain_filter_ok(topic_filter: str) -> bool:
    """Filter rules without the shared-subscription prefix."""
    if not topic_filter or "\x00" in topic_filter or _too_long(topic_filter):
        return False  # [MQTT-4.7.3-1], [MQTT-4.7.3-2], [MQTT-4.7.3-3]
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            # [MQTT-4.7.1-1] '#' is the whole last level
            if level != "#" or i != last:
                return False
        elif "+" in level and level != "+":
            # [MQTT-4.7.1-2] '+' occupies an entire level
            return False
    return True


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/{ShareName}/{filter}`` into (share name, filter).

    Non-shared filters come back as ``(None, topic_filter)``. A malformed
    shared filter raises ValueError: the share name must be non-empty and
    hold no ``/``, ``+`` or ``#`` [MQTT-4.8.2-1, -2], and the inner filter
    must be present and valid.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    rest = topic_filter[len(SHARE_PREFIX) :]
    group, sep, inner = rest.partition("/")
    if not group:
        raise ValueError("empty share name [MQTT-4.8.2-1]")
    if "+" in group or "#" in group:
        raise ValueError("wildcard in share name [MQTT-4.8.2-2]")
    if not sep or not inner:
        raise ValueError("shared subscription without a topic filter [MQTT-4.8.2-2]")
    if not _plain_filter_ok(inner):
        raise ValueError(f"invalid topic filter in shared subscription: {inner!r}")
    return group, inner


def is_valid_topic_filter(topic_filter: str) -> bool:
    """True if ``topic_filter`` may be subscribed to (spec 4.7.1, 4.7.3, 4.8.2)."""
    if topic_filter.startswith(SHARE_PREFIX):
        try:
            parse_shared(topic_filter)
        except ValueError:
            return False
        return True
    return _plain_filter_ok(topic_filter)


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Reference matcher: does ``topic_filter`` match the topic name ``topic``?

    A shared filter matches like its inner filter. Topics starting with ``$``
    are not matched by filters starting with a wildcard [MQTT-4.7.2-1].
    Assumes both arguments are valid.
    """
    if topic_filter.startswith(SHARE_PREFIX):
        _group, topic_filter = parse_shared(topic_filter)
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    ntopic = len(tlevels)
    for i, level in enumerate(flevels):
        if level == "#":
            # '#' also matches the parent level: "a/#" matches "a" (spec 4.7.1.2)
            return True
        if i >= ntopic:
            return False
        if level != "+" and level != tlevels[i]:
            return False
    return len(flevels) == ntopic
