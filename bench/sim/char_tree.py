"""A model of Ray's ``PrefixTree``: the character radix tree behind ``ray-prefix``.

Same answers as ``ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree``
for the calls its router makes, with every replica a tenant of the root:

* ``prefix_match(text)`` walks from the root by first character; a child whose
  text is a prefix of the rest is followed, one that diverges is entered and the
  walk stops there. It returns the matched length and the owners of the node
  where the walk stopped (Ray returns the node's tenants in candidate order; here
  in replica order).
* ``insert(text, replica)`` walks the same way, splitting a node where the text
  diverges (both halves keep the node's owners) and adding a leaf for the rest;
  each node the replica did not own yet adds its length to the replica's
  character count.
* ``smallest()`` lists the replicas with the fewest characters, Ray's fallback
  when the match rate is under its threshold.

Left out, as they do not change routing: per-owner access times and LRU lists
(used only by Ray's eviction, off by default: ``do_eviction=False``), and locks.
Matching uses ``str.startswith`` and a binary search on slices (both in C)
where Ray compares character by character in Python, so the costs differ, not
the answers. Memory: one node per distinct suffix, as in Ray (no eviction).
"""

from __future__ import annotations

from collections.abc import Iterable


class _Node:
    __slots__ = ("children", "owners", "text")

    def __init__(self, text: str, owners: tuple[str, ...] = ()) -> None:
        self.text = text
        # First character -> child; None for a leaf (most nodes: one per request).
        self.children: dict[str, _Node] | None = None
        # Small: ray-prefix keeps a prefix on few replicas.
        self.owners = owners


def _common_prefix(node_text: str, text: str, start: int) -> int:
    """Length of the common prefix of ``node_text`` and ``text[start:]``."""
    low, high = 0, min(len(node_text), len(text) - start)
    while low < high:  # invariant: the first ``low`` characters agree
        mid = (low + high + 1) // 2
        if text.startswith(node_text[:mid], start):
            low = mid
        else:
            high = mid - 1
    return low


class CharPrefixTree:
    def __init__(self, replicas: Iterable[str]) -> None:
        self._root = _Node("")
        # Insertion order is the order ``smallest`` reports ties in (Ray's dict order).
        self.char_count: dict[str, int] = dict.fromkeys(replicas, 0)
        self._rank = {replica: rank for rank, replica in enumerate(self.char_count)}

    def prefix_match(self, text: str) -> tuple[int, list[str]]:
        """Matched characters and the owners, in replica order, where the walk stopped."""
        node = self._root
        at, end = 0, len(text)
        while at < end:
            children = node.children
            child = children.get(text[at]) if children is not None else None
            if child is None:
                break
            if text.startswith(child.text, at):
                at += len(child.text)
                node = child
                continue
            at += _common_prefix(child.text, text, at)
            node = child
            break
        if node is self._root:
            return at, list(self.char_count)
        return at, sorted(node.owners, key=self._rank.__getitem__)

    def smallest(self) -> list[str]:
        counts = self.char_count
        low = min(counts.values())
        return [replica for replica, count in counts.items() if count == low]

    def insert(self, text: str, replica: str) -> None:
        node = self._root
        at, end = 0, len(text)
        counts = self.char_count
        while at < end:
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(text[at])
            if child is None:
                leaf = _Node(text[at:], (replica,))
                children[text[at]] = leaf
                counts[replica] += len(leaf.text)
                return
            if not text.startswith(child.text, at):
                shared = _common_prefix(child.text, text, at)
                # Split: the shared head becomes a parent owned by the same replicas,
                # so their character counts do not change.
                head = _Node(child.text[:shared], child.owners)
                child.text = child.text[shared:]
                head.children = {child.text[0]: child}
                children[text[at]] = head
                child = head
            at += len(child.text)
            node = child
            if replica not in node.owners:
                node.owners = (*node.owners, replica)
                counts[replica] += len(node.text)
