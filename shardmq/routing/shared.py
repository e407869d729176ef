"""Shared subscriptions: ``$share/{group}/{filter}`` groups and their members.

A shared subscription delivers each matching message to one member of the
group instead of to every subscriber [MQTT-4.8.2]. Groups live in their own
``SubscriptionTrie``, apart from ordinary subscriptions (as in mosquitto), so
the fan-out path sees plain subscribers and groups separately and the cost of
matching stays one walk per topic. A group is identified by its name *and*
its filter: ``$share/g/a`` and ``$share/g/b`` are different groups, each with
its own members and its own rotation.

Within a group, ``pick`` rotates round-robin: a cursor walks the members in
the order they joined, and each pick starts from the member after the last
one picked. Members that join are appended to the rotation; members that
leave are cut out with the cursor adjusted so nobody is skipped or picked
twice in a row because of it. ``accept`` lets the caller pass over members
that cannot take a message now (offline, receive-maximum reached); a skipped
member keeps its place and is tried first next time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from shardmq.routing.trie import SubscriptionTrie

__all__ = ["SharedGroup", "SharedSubscriptions"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedGroup(Generic[K, V]):
    """One shared-subscription group: a name, a filter and its members.

    ``members`` maps member key -> value and is for reading; change
    membership through ``add``/``remove`` (or ``SharedSubscriptions``) so the
    rotation stays in step.
    """

    __slots__ = ("name", "topic_filter", "members", "_order", "_cursor")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[K, V] = {}
        self._order: list[K] = []  # rotation order: join order
        self._cursor = 0  # index in _order of the next member to try

    def __repr__(self) -> str:
        return f"SharedGroup({self.name!r}, {self.topic_filter!r}, {len(self.members)} members)"

    def __len__(self) -> int:
        return len(self.members)

    def add(self, key: K, value: V) -> bool:
        """Add ``key`` or replace its value; True if it is a new member.

        A replaced member keeps its place in the rotation.
        """
        is_new = key not in self.members
        self.members[key] = value
        if is_new:
            self._order.append(key)
        return is_new

    def remove(self, key: K) -> bool:
        """Remove ``key``; True if it was a member. O(members), as leaving is rare."""
        if key not in self.members:
            return False
        del self.members[key]
        index = self._order.index(key)
        del self._order[index]
        if index < self._cursor:
            # Everyone after the removed member moved down one place.
            self._cursor -= 1
        if self._cursor >= len(self._order):
            self._cursor = 0
        return True

    def pick(self, accept: Callable[[K, V], bool] | None = None) -> tuple[K, V] | None:
        """The next member in rotation that ``accept`` takes, or None.

        Without ``accept`` this is O(1). With it, at most one full turn of the
        rotation is tried; None means no member accepted (or there are none).
        """
        order = self._order
        count = len(order)
        if not count:
            return None
        cursor = self._cursor
        members = self.members
        for _ in range(count):
            key = order[cursor]
            value = members[key]
            cursor += 1
            if cursor == count:
                cursor = 0
            if accept is None or accept(key, value):
                self._cursor = cursor
                return key, value
        return None


class SharedSubscriptions(Generic[K, V]):
    """All shared-subscription groups of a shard, indexed by filter."""

    __slots__ = ("_groups", "_count")

    def __init__(self) -> None:
        # filter -> {group name: group}: one trie entry per group.
        self._groups: SubscriptionTrie[str, SharedGroup[K, V]] = SubscriptionTrie()
        self._count = 0

    def add(self, group: str, topic_filter: str, key: K, value: V) -> bool:
        """Add ``key`` to the group (created on demand); True if it is new."""
        shared = self._groups.get(topic_filter, group)
        if shared is None:
            shared = SharedGroup(group, topic_filter)
            self._groups.add(topic_filter, group, shared)
        is_new = shared.add(key, value)
        if is_new:
            self._count += 1
        return is_new

    def remove(self, group: str, topic_filter: str, key: K) -> bool:
        """Remove ``key`` from the group; the last member's removal drops the group."""
        shared = self._groups.get(topic_filter, group)
        if shared is None or not shared.remove(key):
            return False
        self._count -= 1
        if not shared.members:
            self._groups.remove(topic_filter, group)
        return True

    def get(self, group: str, topic_filter: str) -> SharedGroup[K, V] | None:
        """The group named ``group`` on ``topic_filter``, or None."""
        return self._groups.get(topic_filter, group)

    def match(self, topic: str) -> list[SharedGroup[K, V]]:
        """Every group whose filter matches ``topic`` (each group once)."""
        result: list[SharedGroup[K, V]] = []
        for groups in self._groups.match(topic):
            result.extend(groups.values())
        return result

    def __len__(self) -> int:
        """The number of (group, filter, key) memberships."""
        return self._count

    def group_count(self) -> int:
        """The number of groups, i.e. distinct (name, filter) pairs."""
        return len(self._groups)
