"""Mosquitto's ACL file: parsing, and the decisions of the compiled ClientAcl."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardmq.auth.acl import Access, AclFile, AclRule, ClientAcl, filter_covers
from shardmq.auth.files import AuthFileError
from shardmq.protocol.topics import topic_matches

# -- parsing -----------------------------------------------------------------


def test_parse_groups_rules_as_mosquitto() -> None:
    acl = AclFile.parse(
        "# comment\n"
        "\n"
        "topic public/#\n"
        "topic read news/#\n"
        "user alice\n"
        "topic write alice/#\n"
        "pattern read devices/%c/#\n"  # a pattern applies to all, wherever it stands
        "user bob\n"
        "topic deny bob/secret\n"
        "user alice\n"  # a second block of the same user continues the first
        "topic readwrite shared/#\n"
    )
    assert acl.general == (
        AclRule(Access.READWRITE, "public/#", 3),
        AclRule(Access.READ, "news/#", 4),
    )
    assert dict(acl.users) == {
        "alice": (AclRule(Access.WRITE, "alice/#", 6), AclRule(Access.READWRITE, "shared/#", 11)),
        "bob": (AclRule(Access.NONE, "bob/secret", 9),),
    }
    assert acl.patterns == (AclRule(Access.READ, "devices/%c/#", 7),)


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("topic a/b", AclRule(Access.READWRITE, "a/b")),
        ("topic read a/b", AclRule(Access.READ, "a/b")),
        ("topic write a/b", AclRule(Access.WRITE, "a/b")),
        ("topic readwrite a/+", AclRule(Access.READWRITE, "a/+")),
        ("topic deny #", AclRule(Access.NONE, "#")),
        ("topic read a b", AclRule(Access.READ, "a b")),  # the rest of the line is the filter
        ("topic   read   a/b  ", AclRule(Access.READ, "a/b")),
        ("  topic read a/b", AclRule(Access.READ, "a/b")),
        ("topic read", AclRule(Access.READWRITE, "read")),  # mosquitto's reading, too
        ("topic $SYS/#", AclRule(Access.READWRITE, "$SYS/#")),
    ],
)
def test_topic_line_forms(line: str, rule: AclRule) -> None:
    parsed = AclFile.parse(line + "\r\n").general
    assert [(r.access, r.topic) for r in parsed] == [(rule.access, rule.topic)]


def test_indented_comments_and_blank_lines_are_skipped() -> None:
    acl = AclFile.parse("   # indented\n\t\n  \ntopic a\n# done")
    assert [r.topic for r in acl.general] == ["a"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("topic", "'topic' without a topic filter"),
        ("pattern   ", "'pattern' without a topic filter"),
        ("topic rw a/b", "unknown access 'rw', expected one of 'read', 'write'"),
        ("topic READ a/b", "unknown access 'READ'"),
        ("topic read a/#/b", "invalid topic filter 'a/#/b'"),
        ("pattern read a/b+", "invalid topic filter 'a/b+'"),
        ("topic a#", "invalid topic filter 'a#'"),
        ("user", "'user' without a username"),
        ("user    ", "'user' without a username"),
        ("usr alice", "unknown keyword 'usr'"),
        ("Topic a", "unknown keyword 'Topic'"),
        ("topic\tread\ta", "(fields are separated by spaces)"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "acl"
    path.write_text(f"# first\ntopic ok\n{line}\n", encoding="utf-8")
    with pytest.raises(AuthFileError) as info:
        AclFile.load(path)
    message = str(info.value)
    assert message.startswith(f"acl_file: {path}:3: ")
    assert fragment in message
    assert "\n" not in message
    assert info.value.line == 3 and info.value.setting == "acl_file"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="no such file"):
        AclFile.load(tmp_path / "missing")
    (tmp_path / "bad").write_bytes(b"topic a\ntopic \xff\n")
    with pytest.raises(AuthFileError, match=r"bad:2: not valid UTF-8"):
        AclFile.load(tmp_path / "bad")


# -- decisions ---------------------------------------------------------------

SAMPLE = """\
topic read public/#
topic write anon/in
user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read $SYS/#
topic readwrite $SYS/broker/connection/#
user bob
topic read bob/#
pattern readwrite devices/%c/#
pattern write users/%u/inbox
pattern read feed/%u-%c
pattern deny devices/%c/locked
"""


def client(username: str | None, client_id: str = "c1", text: str = SAMPLE) -> ClientAcl:
    return AclFile.parse(text).for_client(username, client_id)


# (username, client id, topic, may publish, may read)
DECISIONS: list[tuple[str | None, str, str, bool, bool]] = [
    # the lines before the first "user" are for everyone (mosquitto: anonymous
    # clients only; shardmq follows its own issue 11 here)
    (None, "c1", "public/news", False, True),
    (None, "c1", "anon/in", True, False),
    ("alice", "c1", "public/news", False, True),
    ("alice", "c1", "anon/in", True, False),
    ("carol", "c1", "public/news", False, True),
    # a user's block is that user's only
    ("alice", "c1", "alice/x", True, True),
    ("bob", "c1", "alice/x", False, False),
    ("bob", "c1", "bob/x", False, True),
    ("carol", "c1", "bob/x", False, False),  # a user without a block: general lines, patterns
    # deny beats a grant of the same list, whatever the order in the file
    ("alice", "c1", "alice/secret", False, False),
    ("alice", "c1", "alice/secret/deep", False, False),
    ("alice", "c1", "alice/secretive", True, True),
    # patterns: %c and %u filled in for everyone
    (None, "dev7", "devices/dev7/temp", True, True),
    ("carol", "dev7", "devices/dev7/temp", True, True),
    ("carol", "dev7", "devices/dev8/temp", False, False),
    ("carol", "c1", "users/carol/inbox", True, False),
    ("carol", "c1", "users/dave/inbox", False, False),
    ("carol", "c9", "feed/carol-c9", False, True),  # substituted inside a level
    # a pattern with %u never applies to an anonymous client
    (None, "c1", "users/%u/inbox", False, False),
    (None, "c1", "users//inbox", False, False),
    # pattern deny beats pattern grant ...
    ("carol", "dev7", "devices/dev7/locked", False, False),
    # ... but the client's topic rules come first: alice's grant wins over it
    ("alice", "dev7", "alice/x", True, True),
    # $SYS: "#" does not reach it, an explicit $SYS rule does, and nobody
    # publishes there except a bridge state topic
    ("bob", "c1", "$SYS/broker/uptime", False, False),
    ("alice", "c1", "$SYS/broker/uptime", False, True),
    ("alice", "c1", "$SYS/broker/connection/b1/state", True, True),
    ("alice", "c1", "$SYS/broker/connection/b1/other", False, True),
]


@pytest.mark.parametrize(("username", "client_id", "topic", "publish", "read"), DECISIONS)
def test_decisions(
    username: str | None, client_id: str, topic: str, publish: bool, read: bool
) -> None:
    acl = client(username, client_id)
    assert acl.may_publish(topic) is publish
    assert acl.may_read(topic) is read
    # asked again, from the cache: the same answer
    assert acl.may_publish(topic) is publish
    assert acl.may_read(topic) is read


def test_a_general_deny_beats_a_grant_in_the_users_block() -> None:
    """The lines before the first user and the user's own block are one list,
    deny first: a deny meant for everyone holds against a user's grant."""
    acl = client("u", text="topic deny x/secret\nuser u\ntopic readwrite x/#\n")
    assert acl.may_read("x/open") and acl.may_publish("x/open")
    assert not acl.may_read("x/secret") and not acl.may_publish("x/secret")


def test_matching_rule_without_the_access_does_not_decide() -> None:
    acl = client("u", text="user u\ntopic read x/#\ntopic write x/#\n")
    assert acl.may_read("x/1") and acl.may_publish("x/1")


def test_hash_rule_does_not_grant_sys_but_a_dollar_rule_does() -> None:
    acl = client(None, text="topic read #\n")
    assert acl.may_read("a/b") and not acl.may_read("$SYS/broker/uptime")
    assert not acl.may_subscribe("$SYS/#")
    acl = client(None, text="topic read #\ntopic read $SYS/#\n")
    assert acl.may_read("$SYS/broker/uptime") and acl.may_subscribe("$SYS/broker/+")
    assert not acl.may_publish("$SYS/broker/uptime")


def test_share_topics_are_never_published_or_read() -> None:
    acl = client(None, text="topic readwrite $share/#\ntopic readwrite #\n")
    assert not acl.may_publish("$share/g/t")
    assert not acl.may_read("$share/g/t")
    assert acl.may_subscribe("$share/g/t")  # subscribing to a shared filter is fine
    # a "$share/..." rule is a plain filter, as to mosquitto: it grants no inner topic
    acl = client(None, text="topic read $share/g/t\n")
    assert not acl.may_read("t") and not acl.may_read("$share/g/t")


@pytest.mark.parametrize(
    ("username", "client_id"),
    [("ev+il", "c1"), ("ev#l", "c1"), ("carol", "c+1"), ("carol", "#")],
)
def test_wildcards_in_names_disable_patterns(username: str, client_id: str) -> None:
    text = "user carol\ntopic read own/#\npattern readwrite devices/%c/#\npattern read u/%u\n"
    acl = client(username, client_id, text)
    assert not acl.may_publish(f"devices/{client_id}/x")
    assert not acl.may_read("devices/anything/x")
    assert not acl.may_read(f"u/{username}")
    assert not acl.may_subscribe("devices/#")
    if username == "carol":
        assert acl.may_read("own/x")  # the user's own topic rules still apply


def test_patterns_without_placeholders_apply_to_everyone() -> None:
    text = "pattern read everyone/#\nuser alice\ntopic write alice/#\n"
    for username in (None, "alice", "zed"):
        assert client(username, text=text).may_read("everyone/x")


def test_empty_file_denies_everything() -> None:
    acl = client("alice", text="")
    assert not acl.may_publish("a") and not acl.may_read("a") and not acl.may_subscribe("a")


def test_allow_all_still_keeps_sys_read_only() -> None:
    acl = ClientAcl.allow_all()
    assert acl.may_publish("any/topic") and acl.may_read("any/topic")
    assert acl.may_subscribe("#") and acl.may_subscribe("$SYS/#")
    assert not acl.may_publish("$SYS/broker/uptime")
    assert not acl.may_subscribe("a/#/b")  # not a filter at all


def test_rules_for_orders_denies_first_then_patterns() -> None:
    text = "user u\ntopic read a\ntopic deny b\npattern read p/%c\npattern deny q/%c\n"
    rules = AclFile.parse(text).rules_for("u", "c")
    assert [(r.access, r.topic) for r in rules] == [
        (Access.NONE, "b"),
        (Access.READ, "a"),
        (Access.NONE, "q/c"),
        (Access.READ, "p/c"),
    ]


# -- subscriptions -----------------------------------------------------------

SUBSCRIBE_ACL = """\
user s
topic read sensors/#
topic read rooms/+/temp
topic write cmd/#
topic deny sensors/secret/#
topic readwrite both/+
"""


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("sensors/#", True),
        ("sensors/+/temp", True),
        ("sensors/a/b/c", True),
        ("sensors", True),  # "sensors/#" matches its parent level
        ("sensors/+", True),
        ("#", False),  # wider than any grant
        ("+/temp", False),
        ("+/+/temp", False),
        ("rooms/+/temp", True),
        ("rooms/kitchen/temp", True),
        ("rooms/#", False),
        ("rooms/+/+", False),
        ("rooms/kitchen/temp/x", False),
        ("cmd/x", False),  # write-only: no subscribe
        ("sensors/secret/#", False),  # wholly inside the deny
        ("sensors/secret/x", False),
        ("both/x", True),
        ("both/#", False),
        ("$share/g/sensors/+/temp", True),  # by its inner filter
        ("$share/g/#", False),
        ("$share//x", False),  # malformed
        ("sensors/#/x", False),  # not a filter
    ],
)
def test_may_subscribe(topic_filter: str, allowed: bool) -> None:
    assert client("s", text=SUBSCRIBE_ACL).may_subscribe(topic_filter) is allowed


def test_wildcard_subscription_does_not_leak_denied_topics_at_delivery() -> None:
    acl = client("s", text=SUBSCRIBE_ACL)
    assert acl.may_subscribe("sensors/#")  # overlaps the deny, so it is allowed ...
    assert acl.may_read("sensors/kitchen/temp")
    assert not acl.may_read("sensors/secret/key")  # ... and delivery filters it


@pytest.mark.parametrize(
    ("acl_filter", "sub_filter", "covered"),
    [
        ("#", "#", True),
        ("#", "a/+/b", True),
        ("a/#", "a", True),
        ("a/#", "a/#", True),
        ("a/+", "a/#", False),
        ("a/+", "a/+", True),
        ("a/+", "a/b", True),
        ("a/+", "a", False),
        ("a/b", "a/+", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("+/+", "a/b", True),
        ("+", "#", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/+/x", True),
        ("$SYS/#", "#", False),
    ],
)
def test_filter_covers(acl_filter: str, sub_filter: str, covered: bool) -> None:
    assert filter_covers(acl_filter, sub_filter) is covered


_level = st.sampled_from(["a", "b", "$x", "+", "#"])
_name_level = st.sampled_from(["a", "b", "$x", ""])


def _as_filter(levels: list[str]) -> str:
    # '#' only as the last level
    cut = levels.index("#") + 1 if "#" in levels else len(levels)
    return "/".join(levels[:cut])


@given(
    st.lists(_level, min_size=1, max_size=4),
    st.lists(_level, min_size=1, max_size=4),
    st.lists(st.lists(_name_level, min_size=1, max_size=5), min_size=1, max_size=20),
)
def test_covers_is_sound_against_the_reference_matcher(
    acl_levels: list[str], sub_levels: list[str], topics: list[list[str]]
) -> None:
    """If the ACL filter covers the subscription, every topic the subscription
    matches is matched by the ACL filter too."""
    acl_filter, sub_filter = _as_filter(acl_levels), _as_filter(sub_levels)
    if not filter_covers(acl_filter, sub_filter):
        return
    for levels in topics:
        topic = "/".join(levels)
        if topic_matches(sub_filter, topic):
            assert topic_matches(acl_filter, topic), (acl_filter, sub_filter, topic)


# -- the cache -----------------------------------------------------------------


def test_cache_is_bounded_and_answers_stay_right() -> None:
    acl = AclFile.parse("topic read even/#\n").for_client(None, "c", cache_size=8)
    for i in range(100):
        topic = f"{'even' if i % 2 == 0 else 'odd'}/{i}"
        assert acl.may_read(topic) is (i % 2 == 0)
        assert len(acl._read) <= 8
    for i in range(100):
        assert acl.may_read(f"even/{i}")
        assert not acl.may_read(f"odd/{i}")
