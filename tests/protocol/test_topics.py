"""Topic name and filter rules, shared-subscription parsing and the reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardmq.errors import ProtocolViolation
from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.topics import (
    has_wildcard,
    is_valid_topic_filter,
    parse_shared,
    topic_matches,
    validate_topic_name,
)

# -- topic names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["a", "a/b/c", "/", "/a", "a/", "//", "$SYS/broker", "sport/tennis player1", "ü/日本", " "],
)
def test_valid_topic_names(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "",  # [MQTT-4.7.3-1]
        "+",  # [MQTT-4.7.0-1] wildcards never in topic names
        "#",
        "a/+/b",
        "a/#",
        "a+b",
        "a#",
        "a\x00b",  # [MQTT-4.7.3-2]
        "x" * 65536,  # [MQTT-4.7.3-3]
        "é" * 32768,  # 65536 bytes of UTF-8 in 32768 characters
    ],
)
def test_invalid_topic_names(topic: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        validate_topic_name(topic)
    assert info.value.reason_code == ReasonCode.TOPIC_NAME_INVALID


def test_topic_name_length_limit_is_in_bytes() -> None:
    validate_topic_name("x" * 65535)
    validate_topic_name("é" * 32767)  # 65534 bytes


# -- topic filters -------------------------------------------------------------

VALID_FILTERS = [
    "a",
    "a/b",
    "#",
    "+",
    "+/+",
    "a/#",
    "a/+/c",
    "+/tennis/#",
    "/",
    "/+",
    "a//b",
    "$SYS/#",
    "sport/tennis/player1/#",
    "$share/group/a/b",
    "$share/g/#",
    "$share/g/+/x",
    "$share/g//",
    "$share",  # not a shared subscription: just a filter
    "$sharegroup/a",
]

INVALID_FILTERS = [
    "",  # [MQTT-4.7.3-1]
    "a#",  # [MQTT-4.7.1-1] '#' must be a whole level
    "a/#/b",  # '#' must be the last level
    "#/a",
    "a/b#",
    "##",
    "a+",  # [MQTT-4.7.1-2] '+' must be a whole level
    "+a/b",
    "a/+b",
    "a/++",
    "a\x00b",
    "x" * 65536,
    "$share/",  # empty share name [MQTT-4.8.2-1]
    "$share//a",
    "$share/g",  # no inner filter [MQTT-4.8.2-2]
    "$share/g/",
    "$share/g+/a",  # wildcard in share name [MQTT-4.8.2-2]
    "$share/+/a",
    "$share/#/a",
    "$share/g/a#",  # invalid inner filter
    "$share/g/a/#/b",
]


@pytest.mark.parametrize("topic_filter", VALID_FILTERS)
def test_valid_filters(topic_filter: str) -> None:
    assert is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", INVALID_FILTERS)
def test_invalid_filters(topic_filter: str) -> None:
    assert not is_valid_topic_filter(topic_filter)


# -- shared subscriptions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//", ("g", "/")),
        ("$share/g/$SYS/x", ("g", "$SYS/x")),
        ("a/b", (None, "a/b")),
        ("#", (None, "#")),
        ("$share", (None, "$share")),
        ("$SHARE/g/a", (None, "$SHARE/g/a")),  # the prefix is case-sensitive
    ],
)
def test_parse_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize(
    "topic_filter",
    ["$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/#/a", "$share/g/a+"],
)
def test_parse_shared_rejects(topic_filter: str) -> None:
    with pytest.raises(ValueError):
        parse_shared(topic_filter)


# -- wildcards ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [("a/b", False), ("a/+", True), ("#", True), ("$share/g/a", False), ("$share/g/#", True)],
)
def test_has_wildcard(topic_filter: str, expected: bool) -> None:
    assert has_wildcard(topic_filter) is expected


# -- matching ------------------------------------------------------------------------

MATCHES = [
    # (filter, topic, expected)
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("A/b", "a/b", False),  # case-sensitive (spec 4.7.3)
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("a/#", "a", True),  # '#' includes the parent level (spec 4.7.1.2)
    ("a/#", "a/b", True),
    ("a/#", "a/b/c", True),
    ("a/#", "b/a", False),
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),  # spec 4.7.1.2 example
    ("sport/+", "sport/", True),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+", "/a", False),
    ("+/+", "/finance", True),  # spec 4.7.1.2 example
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/b/+", "a/b/c", True),
    ("+/+/#", "a/b", True),
    ("a/+/#", "a", False),
    ("/", "/", True),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),  # '+' matches an empty level
    # [MQTT-4.7.2-1] wildcards at the first level don't match '$' topics
    ("#", "$SYS/broker/uptime", False),
    ("+/broker/uptime", "$SYS/broker/uptime", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/+/uptime", "$SYS/broker/uptime", True),
    ("$SYS", "$SYS", True),
    ("$SYS/#", "$SYS", True),
    ("a/#", "a/$SYS", True),  # only the first level is special
    ("+/$x", "a/$x", True),
    # shared filters match like their inner filter
    ("$share/g/a/+", "a/b", True),
    ("$share/g/#", "x/y", True),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/a/b", "a/c", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# -- properties of the matcher ---------------------------------------------------------

names = st.lists(st.text(alphabet="ab$/", max_size=3), min_size=1, max_size=4).map("/".join)
names = names.filter(lambda t: bool(t))


@given(names)
def test_a_topic_matches_itself_as_a_filter(topic: str) -> None:
    assert is_valid_topic_filter(topic)
    assert topic_matches(topic, topic)


@given(names)
def test_multi_level_wildcard_matches_all_but_dollar_topics(topic: str) -> None:
    assert topic_matches("#", topic) is not topic.startswith("$")


@given(names)
def test_plus_levels_match_same_depth(topic: str) -> None:
    levels = topic.split("/")
    pattern = "/".join("+" for _ in levels)
    assert topic_matches(pattern, topic) is not topic.startswith("$")
    assert topic_matches(levels[0] + "/#", topic)
