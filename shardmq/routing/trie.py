"""The subscription trie: topic filter -> {subscriber key: value}.

Theory of operation
-------------------
A filter is split on ``/`` into levels and stored as a path of nodes, one node
per level, each node holding a ``dict`` of children keyed by the level's text.
Wildcards are stored as ordinary children named ``+`` and ``#``; there is no
special node type. The node at the end of a filter's path owns that filter's
subscribers, a ``dict`` from subscriber key to value (for the broker: client
id -> subscription options). Empty levels are real levels: ``a//b`` and ``/a``
have a child named ``""``.

Matching a published topic walks the topic's levels once, carrying the set of
nodes reached so far (the *frontier*). For every frontier node and level it
does exactly three dict lookups, as mosquitto's subscription tree does:

* the literal child named after the level, which stays in the frontier;
* the ``+`` child, which matches exactly this one level and stays in the
  frontier;
* the ``#`` child, which matches this level and everything below it, so its
  subscribers are collected at once and the walk does not continue from it.

When the levels run out, the frontier nodes' own subscribers match, and so do
their ``#`` children, because ``a/#`` also matches ``a`` (the parent level).

The frontier only ever holds nodes whose filter prefix matches the topic so
far, so the cost grows with the topic's depth and with the number of
*matching* filters, never with the number of subscriptions overall: a
million subscriptions under ``sensors/`` cost nothing to a message published
on ``alerts/fire``. Each node is reached by exactly one path, so no node is
reported twice and no de-duplication is needed here.

A topic whose first character is ``$`` is not matched by a filter whose first
level is ``+`` or ``#`` [MQTT-4.7.2-1], so for such topics the root is
consulted for its literal child only.

``match`` returns the subscriber dicts themselves, not copies: the fan-out
path reads them once per published message and copying would cost an
allocation per matching filter. A subscriber that matches through several
filters appears in several dicts; merging (for example picking the maximum
QoS, or honouring subscription identifiers) is the caller's policy.

Removing the last subscriber of a filter prunes the nodes left with neither
subscribers nor children, so the trie's size follows its live filters.

Filters are assumed valid (the caller has checked ``#`` is last and wildcards
occupy whole levels); topics are assumed free of wildcards.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["SubscriptionTrie"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Node(Generic[K, V]):
    """One filter level. ``subscribers`` is empty on purely interior nodes."""

    __slots__ = ("children", "subscribers")

    def __init__(self, children: dict[str, _Node[K, V]]) -> None:
        self.children = children
        self.subscribers: dict[K, V] = {}


class SubscriptionTrie(Generic[K, V]):
    """Topic filter -> {subscriber key: value}, matched level by level.

    ``_root`` is the root node; it stands for no filter and never has
    subscribers. Tests may inspect ``_root.children`` (empty once every
    subscription is removed). Subclasses may override ``_new_node`` to
    instrument the trie; it is called only when a filter is added, never while
    matching.
    """

    __slots__ = ("_root", "_count", "_cache")

    #: topics whose match results are remembered between changes to the trie
    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self._root: _Node[K, V] = self._new_node()
        self._count = 0
        # topic -> match result. Most traffic repeats a bounded set of topics,
        # and subscriptions change far less often than messages arrive: one
        # dict lookup then replaces the walk. Any add of a new (filter, key)
        # or any removal empties it, since either can change which nodes
        # match; replacing a value mutates a dict already in the results.
        self._cache: dict[str, list[dict[K, V]]] = {}

    def _new_node(self) -> _Node[K, V]:
        return _Node({})

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Subscribe ``key`` to ``topic_filter`` with ``value``.

        Returns True if the (filter, key) pair is new, False if an existing
        subscription's value was replaced (a re-SUBSCRIBE [MQTT-3.8.4-3]).
        """
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = self._new_node()
            node = child
        subscribers = node.subscribers
        is_new = key not in subscribers
        subscribers[key] = value
        if is_new:
            self._count += 1
            self._cache.clear()
        return is_new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe ``key`` from ``topic_filter``; True if it was subscribed.

        Nodes left with neither subscribers nor children are pruned.
        """
        node = self._root
        path: list[tuple[_Node[K, V], str]] = []
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if key not in node.subscribers:
            return False
        del node.subscribers[key]
        self._count -= 1
        self._cache.clear()
        for parent, level in reversed(path):
            if node.subscribers or node.children:
                break
            del parent.children[level]
            node = parent
        return True

    def get(self, topic_filter: str, key: K) -> V | None:
        """The value ``key`` subscribed to ``topic_filter`` with, or None."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node.subscribers.get(key)

    def match(self, topic: str) -> list[dict[K, V]]:
        """The subscriber dicts of every filter that matches ``topic``.

        The dicts and the list are the trie's own: read them, do not mutate
        them, and do not keep them across a call that changes the trie.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result = self._match(topic)
        cache = self._cache
        if len(cache) >= self.CACHE_SIZE:
            cache.clear()
        cache[topic] = result
        return result

    def _match(self, topic: str) -> list[dict[K, V]]:
        result: list[dict[K, V]] = []
        levels = topic.split("/")
        if topic[:1] == "$":
            # [MQTT-4.7.2-1]: '+' and '#' at the first level do not match '$' topics.
            first = self._root.children.get(levels[0])
            if first is None:
                return result
            frontier = [first]
            del levels[0]
        else:
            frontier = [self._root]
        for level in levels:
            reached: list[_Node[K, V]] = []
            for node in frontier:
                children = node.children
                if not children:
                    continue
                child = children.get("#")
                if child is not None and child.subscribers:
                    result.append(child.subscribers)
                child = children.get(level)
                if child is not None:
                    reached.append(child)
                child = children.get("+")
                if child is not None:
                    reached.append(child)
            if not reached:
                return result
            frontier = reached
        for node in frontier:
            if node.subscribers:
                result.append(node.subscribers)
            # 'a/#' matches 'a' itself: '#' includes the parent level.
            child = node.children.get("#")
            if child is not None and child.subscribers:
                result.append(child.subscribers)
        return result

    def __len__(self) -> int:
        """The number of (filter, key) subscriptions."""
        return self._count

    def filters(self) -> Iterator[str]:
        """Every filter that has at least one subscriber (in no set order)."""
        stack: list[tuple[_Node[K, V], str]] = [
            (child, level) for level, child in self._root.children.items()
        ]
        while stack:
            node, prefix = stack.pop()
            if node.subscribers:
                yield prefix
            for level, child in node.children.items():
                stack.append((child, prefix + "/" + level))
