"""The deadline heap: earliest first, re-set and cancel without stale firings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardmq.routing.deadlines import DeadlineHeap


def test_due_in_order_and_only_when_due() -> None:
    heap: DeadlineHeap[str] = DeadlineHeap()
    heap.set("b", 20.0)
    heap.set("a", 10.0)
    heap.set("c", 30.0)
    assert heap.next() == 10.0
    assert heap.pop_due(9.9) == []
    assert heap.pop_due(20.0) == ["a", "b"]
    assert heap.next() == 30.0 and len(heap) == 1


def test_reset_and_cancel_leave_no_stale_entry() -> None:
    heap: DeadlineHeap[str] = DeadlineHeap()
    heap.set("x", 10.0)
    heap.set("x", 50.0)  # postponed
    heap.set("y", 5.0)
    heap.cancel("y")
    assert heap.next() == 50.0
    assert heap.pop_due(40.0) == []
    assert heap.pop_due(50.0) == ["x"]
    assert heap.next() is None and len(heap) == 0


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 100), st.booleans())))
def test_matches_a_dict_of_latest_deadlines(ops: list[tuple[str, float, bool]]) -> None:
    heap: DeadlineHeap[str] = DeadlineHeap()
    model: dict[str, float] = {}
    for key, when, cancel in ops:
        if cancel:
            heap.cancel(key)
            model.pop(key, None)
        else:
            heap.set(key, when)
            model[key] = when
    assert heap.next() == (min(model.values()) if model else None)
    due = heap.pop_due(50.0)
    assert sorted(due) == sorted(k for k, w in model.items() if w <= 50.0)
    assert [model[k] for k in due] == sorted(model[k] for k in due)
