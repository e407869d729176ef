"""Who wants what: the subscription interest of the other shards. Pure data.

Theory of operation
-------------------
Each shard tells its peers which topic filters its sessions subscribe to, as
deltas (SUB_ADD / SUB_DEL, sent when a filter's local count goes 0 -> 1 or
back; every membership change for a shared filter, since members are
counted) and in full when a link comes up (INTEREST_FULL). The receiving
shard keeps them here:

- plain filters in a trie of filter -> {shard: count}: a publish goes once to
  each shard with a match, never once per remote subscriber;
- shared filters ``$share/g/f`` in a trie of f -> {(g, f, shard): members},
  so the publishing shard can pick one member broker-wide for each group,
  weighted by how many members each shard holds.

A shard whose link drops is forgotten with :meth:`drop_shard`; it re-teaches
its interest when it comes back.
"""

from __future__ import annotations

from ..protocol.topics import parse_shared
from ..routing.trie import SubscriptionTrie

SharedKey = tuple[str, str, int]  # (group, filter, shard)


class Interest:
    def __init__(self) -> None:
        self._plain: SubscriptionTrie[int, int] = SubscriptionTrie()
        self._shared: SubscriptionTrie[SharedKey, int] = SubscriptionTrie()
        #: shard -> full filter -> count, to forget a shard at once
        self.by_shard: dict[int, dict[str, int]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_shard)

    def add(self, shard: int, full_filter: str, count: int = 1) -> None:
        filters = self.by_shard.setdefault(shard, {})
        new = filters.get(full_filter, 0) + count
        filters[full_filter] = new
        self._set(shard, full_filter, new)

    def remove(self, shard: int, full_filter: str) -> None:
        filters = self.by_shard.get(shard)
        if not filters or full_filter not in filters:
            return
        new = filters[full_filter] - 1
        if new <= 0:
            del filters[full_filter]
            if not filters:
                del self.by_shard[shard]
        else:
            filters[full_filter] = new
        self._set(shard, full_filter, max(new, 0))

    def set_full(self, shard: int, filters: list[tuple[str, int]]) -> None:
        self.drop_shard(shard)
        for full_filter, count in filters:
            self.add(shard, full_filter, count)

    def drop_shard(self, shard: int) -> None:
        for full_filter in list(self.by_shard.get(shard, {})):
            self._set(shard, full_filter, 0)
        self.by_shard.pop(shard, None)

    def _set(self, shard: int, full_filter: str, count: int) -> None:
        group, inner = parse_shared(full_filter)
        if group is None:
            if count:
                self._plain.add(inner, shard, count)
            else:
                self._plain.remove(inner, shard)
        else:
            key = (group, inner, shard)
            if count:
                self._shared.add(inner, key, count)
            else:
                self._shared.remove(inner, key)

    def has_shared(self) -> bool:
        return len(self._shared) > 0

    def shards_for(self, topic: str) -> set[int]:
        """Shards with a plain subscription matching ``topic``."""
        out: set[int] = set()
        for subs in self._plain.match(topic):
            out.update(subs)
        return out

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[int, int]]:
        """(group, filter) -> {shard: members} for every shared group matching ``topic``."""
        out: dict[tuple[str, str], dict[int, int]] = {}
        if not len(self._shared):
            return out  # no shared subscriptions elsewhere: skip the walk
        for subs in self._shared.match(topic):
            for (group, inner, shard), members in subs.items():
                out.setdefault((group, inner), {})[shard] = members
        return out
