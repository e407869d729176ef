"""One heap of absolute deadlines per shard, instead of a timer per session.

Theory of operation
-------------------
Session expiry and will delay are kept as absolute wall-clock times with the
state they belong to (so they survive a restart: a snapshot or a store holds
the same numbers). The shard keeps them here, keyed by what they are for
(``("expiry", client_id)``, ``("will", client_id)``), and arms a single event
loop timer for the earliest. Setting a key again or cancelling it does not
touch the heap: the stale entry is skipped when it surfaces (lazy deletion),
so both are O(log n) and O(1). Pure: the caller passes ``now``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DeadlineHeap(Generic[K]):
    __slots__ = ("_heap", "_when", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        #: key -> its current deadline; heap entries that disagree are stale
        self._when: dict[K, float] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, key: object) -> bool:
        return key in self._when

    def get(self, key: K) -> float | None:
        return self._when.get(key)

    def set(self, key: K, when: float) -> None:
        """Due at ``when`` (replaces an earlier deadline of the same key)."""
        self._when[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))

    def cancel(self, key: K) -> None:
        self._when.pop(key, None)

    def next(self) -> float | None:
        """The earliest live deadline, or None."""
        heap = self._heap
        when_of = self._when
        while heap:
            when, _seq, key = heap[0]
            if when_of.get(key) == when:
                return when
            heapq.heappop(heap)  # stale: set again or cancelled
        return None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key due at ``now``, earliest first."""
        due: list[K] = []
        heap = self._heap
        when_of = self._when
        while heap and heap[0][0] <= now:
            when, _seq, key = heapq.heappop(heap)
            if when_of.get(key) == when:
                del when_of[key]
                due.append(key)
        return due
