"""SubscriptionTrie against a naive reference matcher, plus a cost test."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.routing.trie import SubscriptionTrie, _Node

# --- a deliberately naive reference matcher (kept private to the tests) ------


def reference_match(topic_filter: str, topic: str) -> bool:
    """Straight from the spec's wording, one level at a time."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    # [MQTT-4.7.2-1]
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, f_level in enumerate(f_levels):
        if f_level == "#":
            return True  # matches the parent level and everything below
        if i >= len(t_levels):
            return False
        if f_level != "+" and f_level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


# --- strategies ---------------------------------------------------------------

TOPIC_LEVELS = ["a", "b", "", "$SYS", "$x", "c$"]
topic_level = st.sampled_from(TOPIC_LEVELS)
topics = st.lists(topic_level, min_size=1, max_size=5).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*TOPIC_LEVELS, "+"]), min_size=0, max_size=5))
    if draw(st.booleans()) or not levels:
        levels.append("#")  # '#' only ever comes last
    return "/".join(levels)


filter_strategy = st.one_of(filters(), topics)
keys = st.sampled_from(["k1", "k2", "k3"])


def flatten(result: list[dict[str, Any]]) -> Counter[tuple[str, Any]]:
    return Counter(item for subscribers in result for item in subscribers.items())


def expected(model: dict[tuple[str, str], Any], topic: str) -> Counter[tuple[str, Any]]:
    return Counter((key, value) for (f, key), value in model.items() if reference_match(f, topic))


# --- unit cases ---------------------------------------------------------------


def build(*filters_: str) -> SubscriptionTrie[str, str]:
    trie: SubscriptionTrie[str, str] = SubscriptionTrie()
    for f in filters_:
        trie.add(f, f, f)
    return trie


def matched(trie: SubscriptionTrie[str, str], topic: str) -> set[str]:
    return {v for subscribers in trie.match(topic) for v in subscribers.values()}


def test_reference_matcher_spec_examples() -> None:
    assert reference_match("sport/tennis/player1/#", "sport/tennis/player1")
    assert reference_match("sport/tennis/player1/#", "sport/tennis/player1/ranking")
    assert reference_match("sport/#", "sport")
    assert reference_match("#", "a/b")
    assert not reference_match("sport/tennis/+", "sport/tennis")
    assert reference_match("sport/+", "sport/")
    assert reference_match("+/+", "/finance")
    assert reference_match("/+", "/finance")
    assert not reference_match("+", "/finance")
    assert not reference_match("#", "$SYS/x")
    assert not reference_match("+/monitor/Clients", "$SYS/monitor/Clients")
    assert reference_match("$SYS/#", "$SYS/monitor/Clients")
    assert reference_match("$SYS/monitor/+", "$SYS/monitor/Clients")


def test_wildcards() -> None:
    trie = build("a/b", "a/+", "a/#", "#", "+", "+/b", "a/b/c", "+/+/+", "a/+/#")
    assert matched(trie, "a") == {"a/#", "#", "+"}
    assert matched(trie, "a/b") == {"a/b", "a/+", "a/#", "#", "+/b", "a/+/#"}
    assert matched(trie, "a/b/c") == {"a/#", "#", "a/b/c", "+/+/+", "a/+/#"}
    assert matched(trie, "x/b") == {"#", "+/b"}


def test_empty_levels_are_levels() -> None:
    trie = build("a//b", "/a", "+/a", "a/+/b", "+", "a/+")
    assert matched(trie, "a//b") == {"a//b", "a/+/b"}
    assert matched(trie, "/a") == {"/a", "+/a"}
    assert matched(trie, "a/") == {"a/+"}
    assert matched(trie, "a") == {"+"}


def test_dollar_topics_skip_leading_wildcards() -> None:
    trie = build("#", "+/x", "$SYS/#", "$SYS/+", "$SYS", "+")
    assert matched(trie, "$SYS/x") == {"$SYS/#", "$SYS/+"}
    assert matched(trie, "$SYS") == {"$SYS/#", "$SYS"}
    assert matched(trie, "a/x") == {"#", "+/x"}
    # Only the first character counts.
    assert matched(trie, "a$/x") == {"#", "+/x"}


def test_match_returns_the_trie_dicts() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add("a/+", "c1", 1)
    trie.add("a/b", "c1", 2)
    trie.add("a/+", "c2", 0)
    result = trie.match("a/b")
    assert sorted(sorted(d.items()) for d in result) == [
        [("c1", 1), ("c2", 0)],
        [("c1", 2)],
    ]
    assert trie.match("a/b")[0] is result[0]


def test_add_get_remove_len() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    assert trie.add("a/#", "c1", 1) is True
    assert trie.add("a/#", "c1", 2) is False
    assert trie.get("a/#", "c1") == 2
    assert trie.get("a/#", "c2") is None
    assert trie.get("a", "c1") is None
    assert trie.get("a/#/x", "c1") is None
    assert trie.add("a/#", "c2", 0) is True
    assert trie.add("a", "c1", 0) is True
    assert len(trie) == 3
    assert sorted(trie.filters()) == ["a", "a/#"]
    assert trie.remove("a/#", "c3") is False
    assert trie.remove("b", "c1") is False
    assert trie.remove("a/#/c", "c1") is False
    assert trie.remove("a/#", "c1") is True
    assert trie.remove("a/#", "c1") is False
    assert len(trie) == 2
    assert trie.remove("a", "c1") is True
    assert sorted(trie.filters()) == ["a/#"]
    assert trie.remove("a/#", "c2") is True
    assert len(trie) == 0
    assert trie._root.children == {}
    assert trie.match("a") == []


def test_remove_keeps_nodes_still_in_use() -> None:
    trie = build("a/b/c", "a")
    trie.remove("a/b/c", "a/b/c")
    assert list(trie._root.children) == ["a"]
    assert trie._root.children["a"].children == {}
    assert matched(trie, "a") == {"a"}


# --- properties against the reference -----------------------------------------


@settings(max_examples=300)
@given(st.lists(st.tuples(filter_strategy, keys), max_size=25), st.lists(topics, max_size=10))
def test_match_agrees_with_reference(subs: list[tuple[str, str]], probe: list[str]) -> None:
    trie: SubscriptionTrie[str, tuple[str, str]] = SubscriptionTrie()
    model: dict[tuple[str, str], tuple[str, str]] = {}
    for f, key in subs:
        trie.add(f, key, (f, key))
        model[(f, key)] = (f, key)
    # Probe the subscribed filters' own text too, when it is a valid topic.
    probe = probe + [f for f, _ in subs if "+" not in f and "#" not in f]
    for topic in probe:
        result = trie.match(topic)
        assert flatten(result) == expected(model, topic), topic
        # One dict per matching filter, and each dict is non-empty.
        matching_filters = {f for f, _ in model if reference_match(f, topic)}
        assert len(result) == len(matching_filters)
        assert all(result)


ops = st.lists(
    st.tuples(st.booleans(), filter_strategy, keys, st.integers(0, 2)),
    max_size=40,
)


@settings(max_examples=300)
@given(ops, st.lists(topics, max_size=8))
def test_add_remove_sequences(
    operations: list[tuple[bool, str, str, int]], probe: list[str]
) -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    model: dict[tuple[str, str], int] = {}
    for is_add, f, key, value in operations:
        if is_add:
            assert trie.add(f, key, value) is ((f, key) not in model)
            model[(f, key)] = value
        else:
            assert trie.remove(f, key) is ((f, key) in model)
            model.pop((f, key), None)
        assert len(trie) == len(model)
    for (f, key), value in model.items():
        assert trie.get(f, key) == value
    assert sorted(trie.filters()) == sorted({f for f, _ in model})
    for topic in probe:
        assert flatten(trie.match(topic)) == expected(model, topic)
    for f, key in list(model):
        assert trie.remove(f, key)
    assert len(trie) == 0
    assert trie._root.children == {}
    assert list(trie.filters()) == []


# --- cost does not depend on unrelated subscriptions --------------------------


class _CountingDict(dict[str, Any]):
    """A children dict that counts every lookup and every child it hands out.

    Iteration is counted per element, so an implementation that scanned the
    children instead of looking them up would be caught too.
    """

    lookups = 0

    def get(self, key: str, default: Any = None) -> Any:
        _CountingDict.lookups += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        _CountingDict.lookups += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        for key in super().__iter__():
            _CountingDict.lookups += 1
            yield key

    def items(self) -> Any:
        return [(key, dict.__getitem__(self, key)) for key in self]

    def values(self) -> Any:
        return [dict.__getitem__(self, key) for key in self]

    def keys(self) -> Any:
        return list(self)


class _CountingTrie(SubscriptionTrie[str, int]):
    def _new_node(self) -> _Node[str, int]:
        return _Node(_CountingDict())


def _build_counting(unrelated: int) -> _CountingTrie:
    trie = _CountingTrie()
    # The filters that do match.
    for f in ("sensors/+/temp", "sensors/#", "#", "+/kitchen/temp", "sensors/kitchen/temp"):
        trie.add(f, f, 0)
    # Unrelated subscriptions placed as siblings along the matching path, so a
    # scanning implementation would pay for every one of them.
    for i in range(unrelated // 3):
        trie.add(f"sensors/kitchen/t{i}", f"x{i}", 0)
        trie.add(f"sensors/room{i}/temp", f"y{i}", 0)
        trie.add(f"other{i}/#", f"z{i}", 0)
    return trie


def _lookups(trie: _CountingTrie, topic: str) -> tuple[int, int]:
    # the walk itself, not the per-topic result cache in front of it
    _CountingDict.lookups = 0
    result = trie._match(topic)
    return _CountingDict.lookups, sum(len(d) for d in result)


def test_match_cost_independent_of_unrelated_subscriptions() -> None:
    small = _build_counting(10)
    large = _build_counting(100_000)
    assert len(large) > 99_000
    for topic in ("sensors/kitchen/temp", "sensors/kitchen", "$SYS/x", "nothing/here", "a/b/c/d"):
        assert _lookups(small, topic) == _lookups(large, topic), topic
    lookups, hits = _lookups(large, "sensors/kitchen/temp")
    assert hits == 5
    assert lookups > 0
    # Three lookups per frontier node and level (leaves are skipped), plus the
    # final '#' checks: bounded by the matching filters, not the trie's size.
    assert lookups <= 3 * 3 * 5 + 5


def test_routing_package_is_pure() -> None:
    """routing/ is data structures only: no I/O, clock or concurrency imports."""
    import ast
    from pathlib import Path

    import shardmq.routing

    forbidden = {"asyncio", "socket", "time", "threading", "selectors", "uvloop"}
    package_dir = Path(shardmq.routing.__file__).parent
    for path in sorted(package_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, (path.name, name)


def test_match_cache_follows_changes() -> None:
    """Repeated topics are answered from the cache, and every change to the
    trie that could alter a result empties it."""
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add("a/+", "k1", 1)
    first = trie.match("a/b")
    assert trie.match("a/b") is first  # served from the cache
    trie.add("a/#", "k2", 2)  # a new filter that matches
    assert sorted(k for d in trie.match("a/b") for k in d) == ["k1", "k2"]
    trie.add("a/+", "k1", 10)  # a replaced value shows through the cached dicts
    assert [d["k1"] for d in trie.match("a/b") if "k1" in d] == [10]
    trie.remove("a/#", "k2")
    assert [k for d in trie.match("a/b") for k in d] == ["k1"]
    trie.remove("a/+", "k1")
    assert trie.match("a/b") == []
    for i in range(SubscriptionTrie.CACHE_SIZE + 10):  # bounded
        trie.match(f"t/{i}")
    assert len(trie._cache) <= SubscriptionTrie.CACHE_SIZE
