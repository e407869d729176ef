"""Shared-subscription groups: rotation, skipping, identity, cleanup."""

from __future__ import annotations

from collections import Counter

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shardmq.routing.shared import SharedGroup, SharedSubscriptions


def make_group(n: int) -> SharedGroup[str, int]:
    group: SharedGroup[str, int] = SharedGroup("g", "a/#")
    for i in range(n):
        assert group.add(f"m{i}", i)
    return group


def test_empty_group_picks_none() -> None:
    group: SharedGroup[str, int] = SharedGroup("g", "a")
    assert group.pick() is None
    assert group.pick(lambda k, v: True) is None


def test_round_robin_is_fair() -> None:
    n = 7
    group = make_group(n)
    picks = [group.pick() for _ in range(n * 100)]
    assert picks[:n] == [(f"m{i}", i) for i in range(n)]
    # Strict rotation: every window of n picks holds each member once.
    for start in range(0, len(picks), n):
        assert sorted(p for p in picks[start : start + n] if p) == sorted(
            (f"m{i}", i) for i in range(n)
        )
    assert Counter(picks) == {(f"m{i}", i): 100 for i in range(n)}


def test_replacing_a_value_keeps_the_place() -> None:
    group = make_group(3)
    assert group.pick() == ("m0", 0)
    assert group.add("m1", 10) is False
    assert group.pick() == ("m1", 10)
    assert group.pick() == ("m2", 2)


def test_accept_skips_members() -> None:
    group = make_group(4)
    busy = {"m1", "m2"}

    def accept(key: str, value: int) -> bool:
        return key not in busy

    picks = [group.pick(accept) for _ in range(6)]
    assert [p[0] for p in picks if p] == ["m0", "m3", "m0", "m3", "m0", "m3"]
    assert group.pick(lambda k, v: False) is None
    # A refused turn does not move the rotation.
    assert group.pick() == ("m0", 0)
    busy.clear()
    assert group.pick(accept) == ("m1", 1)


def test_accept_receives_key_and_value() -> None:
    group = make_group(3)
    seen: list[tuple[str, int]] = []

    def accept(key: str, value: int) -> bool:
        seen.append((key, value))
        return value == 2

    assert group.pick(accept) == ("m2", 2)
    assert seen == [("m0", 0), ("m1", 1), ("m2", 2)]


def test_rotation_survives_joins_and_leaves() -> None:
    group = make_group(4)
    assert group.pick() == ("m0", 0)
    assert group.pick() == ("m1", 1)
    # Removing an already-served member must not skip m2.
    assert group.remove("m0")
    assert group.pick() == ("m2", 2)
    # Removing the member whose turn is next hands the turn to the one after.
    assert group.remove("m3")
    assert group.pick() == ("m1", 1)
    assert group.add("m4", 4)
    assert [group.pick() for _ in range(3)] == [("m2", 2), ("m4", 4), ("m1", 1)]
    assert group.remove("m9") is False
    assert group.remove("m1") and group.remove("m2") and group.remove("m4")
    assert group.pick() is None
    assert group.add("m5", 5)
    assert group.pick() == ("m5", 5)


CHURN_OPS = st.sampled_from(["add", "add", "remove", "pick", "pick", "pick"])


@settings(max_examples=1000)
@given(st.lists(st.tuples(CHURN_OPS, st.integers(0, 3)), min_size=4, max_size=60))
@example(
    [("add", 0), ("add", 1), ("add", 2), ("add", 3), ("pick", 0), ("pick", 0)]
    + [("remove", 0), ("pick", 0), ("pick", 0)]
)
def test_rotation_fair_under_churn(ops: list[tuple[str, int]]) -> None:
    """When a member gets its next turn, every member present since its last turn had one."""
    group: SharedGroup[int, int] = SharedGroup("g", "t")
    joined: dict[int, int] = {}  # member -> time it (last) joined
    last_pick: dict[int, int] = {}  # member -> time of its latest pick
    for now, (op, key) in enumerate(ops):
        if op == "add":
            assert group.add(key, key) is (key not in joined)
            joined.setdefault(key, now)
        elif op == "remove":
            assert group.remove(key) is (key in joined)
            joined.pop(key, None)
            last_pick.pop(key, None)
        else:
            picked = group.pick()
            if not joined:
                assert picked is None
                continue
            assert picked is not None
            member = picked[0]
            previous = last_pick.get(member)
            if previous is not None:
                for other, since in joined.items():
                    if other != member and since < previous:
                        assert last_pick.get(other, -1) > previous, (member, other)
            last_pick[member] = now
    assert group.members == {k: k for k in joined}


def test_no_member_picked_twice_before_all_others() -> None:
    group = make_group(5)
    for _ in range(3):
        group.pick()
    group.add("m5", 5)
    group.remove("m4")
    picks = [group.pick() for _ in range(10)]
    keys = [p[0] for p in picks if p]
    assert len(set(keys[:5])) == 5
    assert keys[:5] == keys[5:]


def test_subscriptions_add_remove_match() -> None:
    subs: SharedSubscriptions[str, int] = SharedSubscriptions()
    assert subs.add("g", "a/+", "c1", 1) is True
    assert subs.add("g", "a/+", "c1", 2) is False
    assert subs.add("g", "a/+", "c2", 0) is True
    assert subs.add("g", "a/b", "c1", 0) is True
    assert subs.add("h", "a/+", "c1", 0) is True
    assert len(subs) == 4
    assert subs.group_count() == 3

    groups = subs.match("a/b")
    assert sorted((g.name, g.topic_filter) for g in groups) == [
        ("g", "a/+"),
        ("g", "a/b"),
        ("h", "a/+"),
    ]
    by_id = {(g.name, g.topic_filter): g for g in groups}
    assert by_id[("g", "a/+")].members == {"c1": 2, "c2": 0}
    assert by_id[("g", "a/b")].members == {"c1": 0}
    assert [g.topic_filter for g in subs.match("a/c")] == ["a/+", "a/+"]
    assert subs.match("b") == []


def test_same_name_different_filters_are_separate_groups() -> None:
    subs: SharedSubscriptions[str, int] = SharedSubscriptions()
    subs.add("g", "x/#", "c1", 0)
    subs.add("g", "x/y", "c2", 0)
    on_hash = subs.get("g", "x/#")
    on_literal = subs.get("g", "x/y")
    assert on_hash is not None and on_literal is not None and on_hash is not on_literal
    assert on_hash.members == {"c1": 0}
    assert on_literal.members == {"c2": 0}
    # Each rotates on its own.
    assert on_hash.pick() == ("c1", 0)
    assert on_literal.pick() == ("c2", 0)


def test_removing_last_member_removes_group() -> None:
    subs: SharedSubscriptions[str, int] = SharedSubscriptions()
    subs.add("g", "a/b", "c1", 0)
    subs.add("g", "a/b", "c2", 0)
    assert subs.remove("g", "a/b", "c3") is False
    assert subs.remove("h", "a/b", "c1") is False
    assert subs.remove("g", "a/c", "c1") is False
    assert subs.remove("g", "a/b", "c1") is True
    assert subs.get("g", "a/b") is not None
    assert subs.remove("g", "a/b", "c2") is True
    assert subs.remove("g", "a/b", "c2") is False
    assert subs.get("g", "a/b") is None
    assert subs.match("a/b") == []
    assert len(subs) == 0
    assert subs.group_count() == 0
    assert subs._groups._root.children == {}


def test_dollar_topics_and_shared_groups() -> None:
    subs: SharedSubscriptions[str, int] = SharedSubscriptions()
    subs.add("g", "#", "c1", 0)
    subs.add("g", "$SYS/#", "c1", 0)
    assert [g.topic_filter for g in subs.match("$SYS/load")] == ["$SYS/#"]
    assert [g.topic_filter for g in subs.match("load")] == ["#"]
