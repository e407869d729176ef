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

The same table holds the interest of the other nodes of a cluster
(:class:`NodeInterest`, below): plain filters keyed by node id (a node's count
of a filter is the number of its worker processes that hold it), shared ones
by worker process (node id, worker) with that process's members.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from ..protocol.topics import parse_shared
from ..routing.trie import SubscriptionTrie

#: who holds interest: a shard number (the workers of one host) or a node id
M = TypeVar("M", bound=Hashable)


class Interest(Generic[M]):
    def __init__(self) -> None:
        self._plain: SubscriptionTrie[M, int] = SubscriptionTrie()
        #: keyed by (group, filter, member)
        self._shared: SubscriptionTrie[tuple[str, str, M], int] = SubscriptionTrie()
        #: member -> full filter -> count, to forget a member at once
        self.by_shard: dict[M, dict[str, int]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_shard)

    def add(self, shard: M, full_filter: str, count: int = 1) -> None:
        filters = self.by_shard.setdefault(shard, {})
        new = filters.get(full_filter, 0) + count
        filters[full_filter] = new
        self._set(shard, full_filter, new)

    def remove(self, shard: M, full_filter: str) -> None:
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

    def set_count(self, shard: M, full_filter: str, count: int) -> None:
        """``shard`` holds ``full_filter`` ``count`` times now (0: not at all)."""
        filters = self.by_shard.setdefault(shard, {})
        if count > 0:
            filters[full_filter] = count
        else:
            filters.pop(full_filter, None)
            if not filters:
                del self.by_shard[shard]
        self._set(shard, full_filter, max(count, 0))

    def set_full(self, shard: M, filters: list[tuple[str, int]]) -> None:
        self.drop_shard(shard)
        for full_filter, count in filters:
            self.add(shard, full_filter, count)

    def drop_shard(self, shard: M) -> None:
        for full_filter in list(self.by_shard.get(shard, {})):
            self._set(shard, full_filter, 0)
        self.by_shard.pop(shard, None)

    def _set(self, shard: M, full_filter: str, count: int) -> None:
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

    def shards_for(self, topic: str) -> set[M]:
        """Members (shards, or nodes) with a plain subscription matching ``topic``."""
        out: set[M] = set()
        for subs in self._plain.match(topic):
            out.update(subs)
        return out

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[M, int]]:
        """(group, filter) -> {shard: members} for every shared group matching ``topic``."""
        out: dict[tuple[str, str], dict[M, int]] = {}
        if not len(self._shared):
            return out  # no shared subscriptions elsewhere: skip the walk
        for subs in self._shared.match(topic):
            for (group, inner, shard), members in subs.items():
                out.setdefault((group, inner), {})[shard] = members
        return out


#: one worker process of a node: (node id, worker id)
Process = tuple[str, int]


class NodeInterest:
    """The interest of the other nodes, kept per worker process of each.

    Plain filters route per node: :meth:`nodes_for` is one trie match, keyed by
    node. Shared filters (``$share/g/f``) are kept with their member count per
    process, so a publisher can pick one member cluster-wide for each group
    (:meth:`shared_for`, keyed by process).

    Each process numbers its changes: an *epoch* drawn when it starts and a
    *version* that grows by one with each change it announces (a plain filter
    it starts or stops holding; any change of a shared filter's member count),
    which is what :meth:`apply` gets, in order. A change that does not follow
    the last one applied (a gap, or a process restarted under a new epoch) is
    not applied: :meth:`apply` returns False and the caller reloads the
    process's full copy with :meth:`load`, which is ignored when it is older
    than what was applied already. So deltas that race a reload, or a reload
    that races deltas, converge on the newest state.
    """

    def __init__(self) -> None:
        #: plain filters: node -> how many of its processes hold each
        self.nodes: Interest[str] = Interest()
        #: shared filters: process -> members it holds in each group
        self.groups: Interest[Process] = Interest()
        #: process -> the filters it holds (plain: 1; shared: its members)
        self.filters: dict[Process, dict[str, int]] = {}
        #: process -> (epoch, version) of the last change applied
        self.versions: dict[Process, tuple[int, int]] = {}

    def __bool__(self) -> bool:
        return bool(self.nodes) or bool(self.groups)

    def nodes_for(self, topic: str) -> set[str]:
        return self.nodes.shards_for(topic)

    def has_shared(self) -> bool:
        return self.groups.has_shared()

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[Process, int]]:
        """(group, filter) -> {process: members} for the shared groups matching ``topic``."""
        return self.groups.shared_for(topic)

    def apply(self, proc: Process, epoch: int, version: int, full_filter: str, count: int) -> bool:
        """One change (``count``: 0 or 1 for a plain filter, or True/False; the
        members for a shared one); False when it cannot be applied in order
        (reload ``proc``)."""
        known = self.versions.get(proc)
        if known is None or known[0] != epoch:
            return False
        if version <= known[1]:
            return True  # applied already (a reload brought it)
        if version != known[1] + 1:
            return False
        self.versions[proc] = (epoch, version)
        self._set(proc, full_filter, int(count))
        return True

    def load(
        self,
        proc: Process,
        epoch: int,
        version: int,
        filters: Mapping[str, int] | Iterable[str],
    ) -> bool:
        """``proc``'s whole interest as of (epoch, version), as filter -> count
        (or just the filters, each held once); False if it is older than what
        is applied (and so ignored)."""
        known = self.versions.get(proc)
        if known is not None and known[0] == epoch and known[1] >= version:
            return False
        self.versions[proc] = (epoch, version)
        new = dict(filters) if isinstance(filters, Mapping) else dict.fromkeys(filters, 1)
        for full_filter in list(self.filters.get(proc, {})):
            if full_filter not in new:
                self._set(proc, full_filter, 0)
        for full_filter, count in new.items():
            self._set(proc, full_filter, count)
        return True

    def drop_process(self, proc: Process) -> None:
        for full_filter in list(self.filters.get(proc, ())):
            self._set(proc, full_filter, 0)
        self.filters.pop(proc, None)
        self.versions.pop(proc, None)

    def drop_node(self, node: str) -> None:
        for proc in [p for p in self.versions.keys() | self.filters.keys() if p[0] == node]:
            self.drop_process(proc)

    def _set(self, proc: Process, full_filter: str, count: int) -> None:
        shared = full_filter.startswith("$share/")
        if not shared and count:
            count = 1  # a plain filter routes per node: held or not
        filters = self.filters.setdefault(proc, {})
        old = filters.get(full_filter, 0)
        if count == old:
            return
        if count > 0:
            filters[full_filter] = count
        else:
            del filters[full_filter]
        if shared:
            self.groups.set_count(proc, full_filter, count)
        elif count:
            self.nodes.add(proc[0], full_filter)
        else:
            self.nodes.remove(proc[0], full_filter)
