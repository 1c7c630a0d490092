"""Consistent-hash ring with virtual nodes over plain replica id strings.

Algorithm: each replica owns ``virtual_nodes`` points ``blake2b(f"{replica}#{i}")``
(64-bit) on a circle of 2**64 positions. A key belongs to the replica of the first
point clockwise from it (``bisect``). Removing a replica hands only its arcs to the
replicas that follow them; adding one takes about 1/N of the keys, from everyone.

Cost: ``owner`` is O(log(V*N)) (one ``bisect`` on a sorted list). ``walk`` yields
distinct replicas in ring order; reaching all N takes about ``N * H(N)`` point steps
(coupon collector), a few dozen for N <= 16. ``add``/``remove`` rebuild the
sorted point list, O(V*N log(V*N)); membership changes are rare.

Compared with ``ownership.py`` (which knows where a prefix *is* cached), the ring
says where a prefix *should* live when nobody has it, without any state shared
between router instances: every instance builds the same ring from the same ids.
``load.py`` walks this ring when the home replica is over its load bound.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator


class EmptyRingError(LookupError):
    """A lookup on a ring that has no replicas."""


def stable_key(text: str) -> int:
    """A 64-bit ring key for a string, equal in every process and Python version.

    Python's ``hash()`` is salted per process (PYTHONHASHSEED), so two router
    instances using it would disagree on every home replica.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring; not thread-safe (the policy serialises access)."""

    __slots__ = ("_owners", "_points", "_replicas", "_virtual_nodes")

    def __init__(self, replicas: Iterable[str] = (), *, virtual_nodes: int = 160) -> None:
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {virtual_nodes}")
        self._virtual_nodes = virtual_nodes
        self._replicas: set[str] = set(replicas)
        # Parallel sorted arrays: _points[i] is owned by _owners[i].
        self._points: list[int] = []
        self._owners: list[str] = []
        self._rebuild()

    @property
    def virtual_nodes(self) -> int:
        return self._virtual_nodes

    @property
    def replicas(self) -> frozenset[str]:
        return frozenset(self._replicas)

    def __len__(self) -> int:
        return len(self._replicas)

    def __contains__(self, replica: object) -> bool:
        return replica in self._replicas

    def add(self, replica: str) -> None:
        if replica not in self._replicas:
            self._replicas.add(replica)
            self._rebuild()

    def remove(self, replica: str) -> None:
        if replica in self._replicas:
            self._replicas.discard(replica)
            self._rebuild()

    def set_replicas(self, replicas: Iterable[str]) -> None:
        """Replace the membership with ``replicas`` in one rebuild."""
        wanted = set(replicas)
        if wanted != self._replicas:
            self._replicas = wanted
            self._rebuild()

    def owner(self, key: int) -> str:
        """The replica whose point is the first at or after ``key`` (wrapping)."""
        if not self._points:
            raise EmptyRingError("the ring has no replicas")
        index = bisect_right(self._points, key)
        return self._owners[index if index < len(self._owners) else 0]

    def walk(self, key: int) -> Iterator[str]:
        """Yield every replica once, in ring order starting with ``owner(key)``."""
        owners = self._owners
        if not owners:
            raise EmptyRingError("the ring has no replicas")
        total = len(owners)
        wanted = len(self._replicas)
        start = bisect_right(self._points, key)
        seen: set[str] = set()
        for step in range(total):
            replica = owners[(start + step) % total]
            if replica not in seen:
                seen.add(replica)
                yield replica
                if len(seen) == wanted:
                    return

    def _rebuild(self) -> None:
        # Sorting (point, replica) pairs breaks the (astronomically rare) tie of
        # two equal points by replica id, so every instance orders them alike.
        pairs = sorted(
            (stable_key(f"{replica}#{i}"), replica)
            for replica in self._replicas
            for i in range(self._virtual_nodes)
        )
        self._points = [point for point, _ in pairs]
        self._owners = [replica for _, replica in pairs]
