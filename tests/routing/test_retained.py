"""RetainedStore against a naive reference matcher."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.routing.retained import RetainedStore


def reference_match(topic_filter: str, topic: str) -> bool:
    """The spec's matching rule, written as plainly as possible."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):  # [MQTT-4.7.2-1]
        return False
    for i, f_level in enumerate(f_levels):
        if f_level == "#":
            return True
        if i >= len(t_levels):
            return False
        if f_level != "+" and f_level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


TOPIC_LEVELS = ["a", "b", "", "$SYS", "$x", "c$"]
topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join)


@st.composite
def wildcard_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*TOPIC_LEVELS, "+"]), min_size=0, max_size=5))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    return "/".join(levels)


filters = st.one_of(wildcard_filters(), topics)


def store_of(*topics_: str) -> RetainedStore[str]:
    store: RetainedStore[str] = RetainedStore()
    for t in topics_:
        store.set(t, t.upper())
    return store


def matched(store: RetainedStore[Any], topic_filter: str) -> list[str]:
    return sorted(t for t, _ in store.match(topic_filter))


def test_literal() -> None:
    store = store_of("a/b", "a/b/c", "a")
    assert store.match("a/b") == [("a/b", "A/B")]
    assert store.match("a/x") == []
    assert store.match("a/b/c/d") == []
    assert store.get("a") == "A"
    assert store.get("a/b/x") is None


def test_literal_filter_is_one_lookup() -> None:
    store = store_of("a/b/c")
    # A prefix of a stored topic is an interior node, not a message.
    assert store.match("a/b") == []
    assert store.get("a/b") is None


def test_plus() -> None:
    store = store_of("a/b", "a/c", "a/b/c", "a", "a/", "x/b")
    assert matched(store, "a/+") == ["a/", "a/b", "a/c"]
    assert matched(store, "+/b") == ["a/b", "x/b"]
    assert matched(store, "+") == ["a"]
    assert matched(store, "+/+/+") == ["a/b/c"]
    assert matched(store, "a/+/c") == ["a/b/c"]


def test_hash() -> None:
    store = store_of("a", "a/b", "a/b/c", "ab", "/a", "x")
    assert matched(store, "a/#") == ["a", "a/b", "a/b/c"]
    assert matched(store, "#") == ["/a", "a", "a/b", "a/b/c", "ab", "x"]
    assert matched(store, "a/b/#") == ["a/b", "a/b/c"]
    assert matched(store, "+/#") == ["/a", "a", "a/b", "a/b/c", "ab", "x"]
    assert matched(store, "/#") == ["/a"]
    assert matched(store, "a/+/#") == ["a/b", "a/b/c"]


def test_dollar_sys() -> None:
    store = store_of("$SYS/broker/load", "$SYS", "a/$SYS", "x")
    assert matched(store, "#") == ["a/$SYS", "x"]
    assert matched(store, "+/broker/load") == []
    assert matched(store, "+") == ["x"]
    assert matched(store, "$SYS/#") == ["$SYS", "$SYS/broker/load"]
    assert matched(store, "$SYS/+/load") == ["$SYS/broker/load"]
    assert matched(store, "+/$SYS") == ["a/$SYS"]
    assert matched(store, "$SYS/broker/load") == ["$SYS/broker/load"]


def test_set_replaces_and_values_stored_as_given() -> None:
    store: RetainedStore[bytes | None] = RetainedStore()
    store.set("a", b"1")
    store.set("a", b"")
    assert store.get("a") == b""
    assert len(store) == 1
    store.set("b", None)
    assert len(store) == 2
    assert sorted(store.items(), key=lambda item: item[0]) == [("a", b""), ("b", None)]


def test_delete_prunes() -> None:
    store = store_of("a/b/c", "a", "a/x")
    assert store.delete("a/b") is False
    assert store.delete("nope") is False
    assert store.delete("a/b/c") is True
    assert store.delete("a/b/c") is False
    assert set(store._root.children["a"].children) == {"x"}
    assert store.delete("a") is True
    # 'a' still has a child, so it stays as an interior node.
    assert list(store._root.children) == ["a"]
    assert matched(store, "a/#") == ["a/x"]
    assert store.delete("a/x") is True
    assert store._root.children == {}
    assert len(store) == 0
    assert store.match("#") == []


@settings(max_examples=300)
@given(st.lists(topics, max_size=25), st.lists(filters, max_size=10))
def test_match_agrees_with_reference(stored: list[str], probe: list[str]) -> None:
    store: RetainedStore[int] = RetainedStore()
    model: dict[str, int] = {}
    for i, t in enumerate(stored):
        store.set(t, i)
        model[t] = i
    for topic_filter in probe + stored:
        assert sorted(store.match(topic_filter)) == sorted(
            (t, v) for t, v in model.items() if reference_match(topic_filter, t)
        ), topic_filter


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.booleans(), topics, st.integers(0, 3)), max_size=40),
    st.lists(filters, max_size=8),
)
def test_set_delete_sequences(ops: list[tuple[bool, str, int]], probe: list[str]) -> None:
    store: RetainedStore[int] = RetainedStore()
    model: dict[str, int] = {}
    for is_set, topic, value in ops:
        if is_set:
            store.set(topic, value)
            model[topic] = value
        else:
            assert store.delete(topic) is (topic in model)
            model.pop(topic, None)
        assert len(store) == len(model)
    assert dict(store.items()) == model
    for topic, value in model.items():
        assert store.get(topic) == value
    for topic_filter in probe:
        assert sorted(store.match(topic_filter)) == sorted(
            (t, v) for t, v in model.items() if reference_match(topic_filter, t)
        )
    for topic in list(model):
        assert store.delete(topic)
    assert len(store) == 0
    assert store._root.children == {}


class _Untouchable:
    """Stands in for the tree's root: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"literal match walked the tree ({name})")


def test_literal_filter_does_not_walk_the_tree() -> None:
    store = store_of("a/b/c", "a/b/d")
    store._root = _Untouchable()  # type: ignore[assignment]
    assert store.match("a/b/c") == [("a/b/c", "A/B/C")]
    assert store.match("a/b") == []
    assert store.get("a/b/d") == "A/B/D"
