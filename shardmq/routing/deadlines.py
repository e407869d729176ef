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


T = TypeVar("T", bound=Hashable)


class TimerWheel(Generic[T]):
    """Many coarse deadlines (connect timeouts, keep alives) in one set per
    whole second, instead of an event loop timer per connection (a uvloop
    timer handle with its libuv timer is about 600 bytes, armed and
    cancelled at least twice per connection).

    A deadline is filed in the bucket of the next whole second after it, so
    an item comes due up to a second late and never early. :meth:`add`
    returns the bucket (a dict used as an ordered set: smaller than a set);
    the caller keeps it and pops the item from it to cancel (O(1), no
    lookup). Buckets are keyed by ``int`` seconds of the caller's clock;
    ``earliest`` is the first bucket's key, for the caller's one timer.
    Pure: the caller passes ``now``.
    """

    __slots__ = ("_buckets", "earliest")

    def __init__(self) -> None:
        self._buckets: dict[int, dict[T, None]] = {}
        #: key of the earliest bucket (None: empty)
        self.earliest: int | None = None

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, item: T, when: float) -> dict[T, None]:
        """File ``item`` as due at ``when``; returns its bucket."""
        key = int(when) + 1
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            if self.earliest is None or key < self.earliest:
                self.earliest = key
        bucket[item] = None
        return bucket

    def pop_due(self, now: float) -> list[T]:
        """Remove and return the items of every bucket due at ``now``."""
        buckets = self._buckets
        due: list[T] = []
        if self.earliest is None or self.earliest > now:
            return due
        for key in sorted(k for k in buckets if k <= now):
            due.extend(buckets.pop(key))
        self.earliest = min(buckets) if buckets else None
        return due
