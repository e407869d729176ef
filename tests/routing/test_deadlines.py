"""The deadline heap: earliest first, re-set and cancel without stale firings;
the timer wheel: never early, at most a second late, cancel by discard."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardmq.routing.deadlines import DeadlineHeap, TimerWheel


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


def test_wheel_items_come_due_in_the_second_after_their_deadline() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    wheel.add("late", 12.5)
    wheel.add("early", 10.0)
    wheel.add("same second", 10.9)
    assert wheel.earliest == 11 and len(wheel) == 3
    assert wheel.pop_due(10.99) == []  # never before its deadline's next second
    assert wheel.pop_due(11.0) == ["early", "same second"]  # in the order filed
    assert wheel.earliest == 13
    assert wheel.pop_due(12.9) == []
    assert wheel.pop_due(14.0) == ["late"]
    assert wheel.earliest is None and len(wheel) == 0


def test_wheel_cancel_is_a_pop_from_the_returned_bucket() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    bucket = wheel.add("gone", 5.0)
    wheel.add("kept", 5.5)
    bucket.pop("gone")
    assert wheel.pop_due(6.0) == ["kept"]


@given(st.lists(st.floats(min_value=0, max_value=1000), max_size=50), st.floats(0, 1100))
def test_wheel_never_early_and_at_most_a_second_late(whens: list[float], now: float) -> None:
    wheel: TimerWheel[int] = TimerWheel()
    for i, when in enumerate(whens):
        wheel.add(i, when)
    due = set(wheel.pop_due(now))
    for i, when in enumerate(whens):
        if i in due:
            assert when < now
        else:
            assert when > now - 1.0
