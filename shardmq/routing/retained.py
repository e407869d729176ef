"""The retained-message store: topic -> value, matched by topic filter.

The subscription trie answers "which filters match this topic"; the retained
store answers the reverse, "which topics match this filter", when a client
subscribes. Topics are kept in a tree of levels, one node per level with a
``dict`` of children, and a flat ``dict`` from topic to its node:

* a filter without wildcards is one lookup in the flat dict, never a scan;
* ``+`` iterates the children of the nodes reached so far (one level);
* ``#`` collects the nodes reached so far and their whole subtrees, since
  ``a/#`` matches ``a`` as well as everything below it;
* at the first level, ``+`` and ``#`` skip children whose name starts with
  ``$`` [MQTT-4.7.2-1], so ``#`` does not return ``$SYS/...``.

Each node that holds a message keeps the ``(topic, value)`` pair itself, so
matching hands out the stored tuples without rebuilding topic strings from
levels. Deleting a topic prunes the nodes left without a message or children,
walking up through parent links.

Values are stored as given: expiry, clearing on an empty payload and the like
are the caller's policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["RetainedStore"]

V = TypeVar("V")


class _Node(Generic[V]):
    __slots__ = ("parent", "level", "children", "entry")

    def __init__(self, parent: _Node[V] | None, level: str) -> None:
        self.parent = parent
        self.level = level
        self.children: dict[str, _Node[V]] = {}
        self.entry: tuple[str, V] | None = None


class RetainedStore(Generic[V]):
    """Retained messages by topic, matched against topic filters.

    ``_root`` is the root node (it never holds a message); tests may inspect
    ``_root.children``, which is empty once every topic is deleted.
    """

    __slots__ = ("_root", "_nodes")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node(None, "")
        self._nodes: dict[str, _Node[V]] = {}  # topic -> node holding its entry

    def set(self, topic: str, value: V) -> None:
        """Store ``value`` for ``topic``, replacing any previous one."""
        node = self._nodes.get(topic)
        if node is None:
            node = self._root
            for level in topic.split("/"):
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node(node, level)
                node = child
            self._nodes[topic] = node
        node.entry = (topic, value)

    def delete(self, topic: str) -> bool:
        """Forget ``topic``; True if it was stored. Prunes emptied nodes."""
        node = self._nodes.pop(topic, None)
        if node is None:
            return False
        node.entry = None
        parent = node.parent
        while parent is not None and node.entry is None and not node.children:
            del parent.children[node.level]
            node = parent
            parent = node.parent
        return True

    def get(self, topic: str) -> V | None:
        """The value stored for ``topic``, or None."""
        node = self._nodes.get(topic)
        if node is None or node.entry is None:
            return None
        return node.entry[1]

    def match(self, topic_filter: str) -> list[tuple[str, V]]:
        """Every stored ``(topic, value)`` whose topic ``topic_filter`` matches."""
        result: list[tuple[str, V]] = []
        if "+" not in topic_filter and "#" not in topic_filter:
            node = self._nodes.get(topic_filter)
            if node is not None and node.entry is not None:
                result.append(node.entry)
            return result
        frontier = [self._root]
        first = True
        for level in topic_filter.split("/"):
            if level == "#":
                stack: list[_Node[V]] = []
                for node in frontier:
                    if node.entry is not None:
                        # 'a/#' matches 'a' itself (the root never has an entry).
                        result.append(node.entry)
                    if first:
                        # [MQTT-4.7.2-1]: a leading '#' does not match '$' topics.
                        stack.extend(c for n, c in node.children.items() if n[:1] != "$")
                    else:
                        stack.extend(node.children.values())
                while stack:
                    node = stack.pop()
                    if node.entry is not None:
                        result.append(node.entry)
                    stack.extend(node.children.values())
                return result
            reached: list[_Node[V]] = []
            if level == "+":
                for node in frontier:
                    if first:
                        # [MQTT-4.7.2-1]: a leading '+' does not match '$' topics.
                        reached.extend(c for n, c in node.children.items() if n[:1] != "$")
                    else:
                        reached.extend(node.children.values())
            else:
                for node in frontier:
                    child = node.children.get(level)
                    if child is not None:
                        reached.append(child)
            if not reached:
                return result
            frontier = reached
            first = False
        for node in frontier:
            if node.entry is not None:
                result.append(node.entry)
        return result

    def __len__(self) -> int:
        """The number of retained topics."""
        return len(self._nodes)

    def items(self) -> Iterator[tuple[str, V]]:
        """Every stored ``(topic, value)`` pair (in no set order)."""
        for node in self._nodes.values():
            if node.entry is not None:
                yield node.entry
