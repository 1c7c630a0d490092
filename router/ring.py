"""Consistent-hash ring with virtual nodes over plain replica id strings.

Algorithm: each replica owns ``virtual_nodes`` points ``blake2b(f"{seat}#{i}")``
(64-bit) on a circle of 2**64 positions, where the seat is the replica's id or, when
the caller names one, a stable position that outlives the replica (``rank_seat``: a
restarted replica takes back its predecessor's arcs). A key belongs to the replica of the first
point clockwise from it (``bisect``). Removing a replica hands only its arcs to the
replicas that follow them; adding one takes about 1/N of the keys, from everyone.

Cost: ``owner`` is O(log(V*N)) (one ``bisect`` on a sorted list). ``walk`` yields
distinct replicas in ring order; reaching all N takes about ``N * H(N)`` point steps
(coupon collector), a few dozen for N <= 16. ``add``/``remove`` rebuild the
sorted point list, O(V*N log(V*N)); membership changes are rare.

A routing decision needs only the head of a walk, so the walk is never built in full
on the routing path: ``in_ring_order`` sorts a few replicas (a prefix's owners) by
where the walk would meet them, O(k log V) for k replicas (O(k log k) once their
distances are memoised, below), and ``order`` returns the whole walk as a lazy
``RingOrder`` that is materialised only when read (a retry list that is usually
never needed). At N = 1,000 a full walk is about 7,500 point steps.

``first_in_ring_order`` and ``in_ring_order`` (the policy's tie-break among equally
loaded owners, ``owner_loads.py``) are asked about the same keys again and again: a
hot prefix's key and its owners recur on every request for it. So the distance along
the ring from a key to each replica, one ``bisect`` to compute, is memoised per key
(an LRU of at most ``_MEMO_MAX_KEYS`` keys and ``_MEMO_MAX_DISTANCES`` distances in
all, about 8 MB; cleared when the points change): a repeated tie-break among k
replicas is k dict reads in C instead of k bisects.

Compared with ``ownership.py`` (which knows where a prefix *is* cached), the ring
says where a prefix *should* live when nobody has it, without any state shared
between router instances: every instance builds the same ring from the same ids.
``load.py`` walks this ring when the home replica is over its load bound.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from itertools import chain, compress, islice, repeat
from typing import overload

# Bounds of the per-key distance memo (``first_in_ring_order``): 64k distances cover
# the owners of a few hundred hot prefixes at N = 1,000 in about 8 MB, and 4k keys
# keep a stream of one-off keys (sessions) to about 1 MB of empty-ish dicts.
_MEMO_MAX_DISTANCES = 65_536
_MEMO_MAX_KEYS = 4_096


class EmptyRingError(LookupError):
    """A lookup on a ring that has no replicas."""


def rank_seat(rank: int) -> str:
    """The ring seat of the replica with this deployment rank. Serve gives a replica
    that replaces a dead one the lowest free rank, the dead one's, so on this seat the
    replacement takes back exactly the arcs its predecessor had: a restart moves only
    that replica's keys, and every router instance agrees (the rank is the
    controller's, not a local choice)."""
    return f"rank-{rank}"


def stable_key(text: str) -> int:
    """A 64-bit ring key for a string, equal in every process and Python version.

    Python's ``hash()`` is salted per process (PYTHONHASHSEED), so two router
    instances using it would disagree on every home replica.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring; not thread-safe (the policy serialises access)."""

    __slots__ = ("_distances", "_epoch", "_indices", "_memo_size", "_owners", "_points",
                 "_replicas", "_seats", "_virtual_nodes")

    def __init__(self, replicas: Iterable[str] = (), *, virtual_nodes: int = 160) -> None:
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {virtual_nodes}")
        self._virtual_nodes = virtual_nodes
        self._replicas: set[str] = set(replicas)
        # Replica -> the name its ring points are hashed from (itself by default). A
        # replacement that takes a departed replica's seat takes exactly its arcs.
        self._seats: dict[str, str] = {}
        # Parallel sorted arrays: _points[i] is owned by _owners[i].
        self._points: list[int] = []
        self._owners: list[str] = []
        # Replica -> its sorted positions in _points; a snapshot rebuilt with them.
        self._indices: dict[str, list[int]] = {}
        # Key -> {replica: point steps from the key to the replica's first point, or
        # len(_points) for a replica off the ring}; oldest key first. _memo_size counts
        # the distances held. Both are reset with the points.
        self._distances: OrderedDict[int, dict[str, int]] = OrderedDict()
        self._memo_size = 0
        # Counts rebuilds: an order computed at another epoch is stale.
        self._epoch = 0
        self._rebuild()

    @property
    def virtual_nodes(self) -> int:
        return self._virtual_nodes

    @property
    def replicas(self) -> frozenset[str]:
        return frozenset(self._replicas)

    @property
    def epoch(self) -> int:
        """Changes whenever the points do: a ring order read at another epoch is stale."""
        return self._epoch

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

    def set_replicas(self, replicas: Iterable[str],
                     seats: Mapping[str, str] | None = None) -> None:
        """Replace the membership with ``replicas`` in one rebuild. ``seats`` names the
        position of some of them (see ``rank_seat``); the others sit at their own id."""
        wanted = set(replicas)
        wanted_seats = {r: s for r, s in (seats or {}).items() if r in wanted and s != r}
        if wanted != self._replicas or wanted_seats != self._seats:
            self._replicas = wanted
            self._seats = wanted_seats
            self._rebuild()

    def seat(self, replica: str) -> str:
        return self._seats.get(replica, replica)

    def owner(self, key: int) -> str:
        """The replica whose point is the first at or after ``key`` (wrapping)."""
        if not self._points:
            raise EmptyRingError("the ring has no replicas")
        index = bisect_right(self._points, key)
        return self._owners[index if index < len(self._owners) else 0]

    def walk(self, key: int) -> Iterator[str]:
        """Yield every replica once, in ring order starting with ``owner(key)``."""
        if not self._owners:
            raise EmptyRingError("the ring has no replicas")
        return _walk(self._points, self._owners, len(self._replicas), key)

    def order(self, key: int, *, first: str | None = None) -> RingOrder:
        """``walk(key)`` as a lazy sequence, with ``first`` (if given) moved to the front."""
        if not self._owners:
            raise EmptyRingError("the ring has no replicas")
        return RingOrder(self._points, self._owners, len(self._replicas), key, first)

    def first_with_room(self, key: int, in_flight: Mapping[str, int],
                        capacity: int) -> tuple[str, bool] | None:
        """The first replica along ``walk(key)`` with fewer than ``capacity`` requests
        in flight (``in_flight.get(r, 0)``), and whether it is not the key's owner (a
        spill); None if none has room. ``load.choose_bounded(walk(key), ...)``, cheaper.

        Steps along the points from the key, once round the circle at most, with
        every step in C (two parallel point iterators, one read for its load): the
        first point whose replica has room is that replica's first in the walk, since
        every replica met before it had none. About 0.06 us a step against about
        0.3 us for a step of the generator ``walk``.
        """
        owners = self._owners
        if not owners:
            raise EmptyRingError("the ring has no replicas")
        total = len(owners)
        start = bisect_right(self._points, key)
        home = owners[start if start < total else 0]
        if in_flight.get(home, 0) < capacity:
            return home, False  # the common case, without building the iterators

        def circle() -> Iterator[str]:
            return chain(map(owners.__getitem__, range(start, total)), islice(owners, start))

        loads = map(in_flight.get, circle(), repeat(0))
        chosen = next(compress(circle(), map(capacity.__gt__, loads)), None)
        if chosen is None:
            return None
        return chosen, chosen != home

    def first_in_ring_order(self, replicas: Collection[str], key: int) -> str | None:
        """``in_ring_order(replicas, key)[0]`` (None if none is on the ring), cheaper.

        Few replicas: the least memoised distance from the key (module docstring),
        one ``bisect`` for each distance not yet memoised. Many: step along the
        points from the key until one of them owns a point, about ``N / k`` steps
        for k of N replicas, iterated in C. The crossover (k * k > N / 2) balances
        a memoised read and min (~0.07 us per replica) against a point step (~0.03 us).
        """
        wanted = replicas if isinstance(replicas, (set, frozenset)) else frozenset(replicas)
        if len(wanted) * len(wanted) * 2 <= len(self._replicas):
            distances = self._distances_from(key)
            if not distances.keys() >= wanted:
                self._memoise(distances, wanted, key)
            first = min(wanted, key=distances.__getitem__, default=None)
            return first if first is not None and distances[first] < len(self._points) else None
        owners = self._owners
        start = bisect_right(self._points, key)
        points = chain(map(owners.__getitem__, range(start, len(owners))), owners)
        return next(filter(wanted.__contains__, points), None)

    def _distances_from(self, key: int) -> dict[str, int]:
        memo = self._distances
        distances = memo.get(key)
        if distances is None:
            distances = memo[key] = {}
            if len(memo) > _MEMO_MAX_KEYS:
                self._memo_size -= len(memo.popitem(last=False)[1])
        else:
            memo.move_to_end(key)
        return distances

    def _memoise(self, distances: dict[str, int], replicas: Iterable[str], key: int) -> None:
        """Add the distances from ``key`` of those ``replicas`` not yet memoised; then
        drop the least recently used keys' distances past ``_MEMO_MAX_DISTANCES``."""
        indices = self._indices
        total = len(self._points)
        start = bisect_right(self._points, key)
        added = 0
        for replica in replicas:
            if replica in distances:
                continue
            positions = indices.get(replica)
            if positions is None:
                distances[replica] = total  # off the ring: after every replica on it
            else:
                at = bisect_left(positions, start)
                index = positions[at] if at < len(positions) else positions[0] + total
                distances[replica] = index - start
            added += 1
        self._memo_size += added
        memo = self._distances
        while self._memo_size > _MEMO_MAX_DISTANCES and len(memo) > 1:
            self._memo_size -= len(memo.popitem(last=False)[1])

    def in_ring_order(self, replicas: Iterable[str], key: int) -> list[str]:
        """The members of ``replicas`` that are on the ring, in ``walk(key)`` order.

        Equal to ``[r for r in walk(key) if r in replicas]`` in O(k log k) with the
        distances memoised (O(k log V) to memoise them): the walk meets a replica first
        at its first point at or after the key's position, wrapping around.
        """
        wanted = replicas if isinstance(replicas, (set, frozenset)) else frozenset(replicas)
        distances = self._distances_from(key)
        if not distances.keys() >= wanted:
            self._memoise(distances, wanted, key)
        ordered = sorted(wanted, key=distances.__getitem__)
        # Replicas off the ring sort last, at distance len(_points).
        total = len(self._points)
        while ordered and distances[ordered[-1]] >= total:
            ordered.pop()
        return ordered

    def _rebuild(self) -> None:
        # Sorting (point, replica) pairs breaks the (astronomically rare) tie of
        # two equal points by replica id, so every instance orders them alike.
        pairs = sorted(
            (stable_key(f"{self._seats.get(replica, replica)}#{i}"), replica)
            for replica in self._replicas
            for i in range(self._virtual_nodes)
        )
        self._points = [point for point, _ in pairs]
        self._owners = [replica for _, replica in pairs]
        indices: dict[str, list[int]] = {}
        for index, replica in enumerate(self._owners):
            indices.setdefault(replica, []).append(index)
        self._indices = indices
        self._distances.clear()
        self._memo_size = 0
        self._epoch += 1


def _walk(points: list[int], owners: list[str], wanted: int, key: int) -> Iterator[str]:
    # ``points``/``owners`` are never mutated (a rebuild replaces them), so a walk
    # that outlives a membership change keeps reading a consistent snapshot.
    total = len(owners)
    start = bisect_right(points, key)
    seen: set[str] = set()
    for step in range(total):
        replica = owners[(start + step) % total]
        if replica not in seen:
            seen.add(replica)
            yield replica
            if len(seen) == wanted:
                return


class RingOrder(Sequence[str]):
    """A ring walk from a key, ``first`` moved to the front, built on first read.

    Compares equal to any sequence with the same items (a tuple included), so it
    reads like the tuple it stands for. Immutable and safe to share between threads:
    it holds a snapshot of the ring's point lists.
    """

    __slots__ = ("_first", "_items", "_key", "_owners", "_points", "_wanted")

    def __init__(self, points: list[int], owners: list[str], wanted: int, key: int,
                 first: str | None = None) -> None:
        self._points = points
        self._owners = owners
        self._wanted = wanted
        self._key = key
        self._first = first
        self._items: tuple[str, ...] | None = None

    def _materialise(self) -> tuple[str, ...]:
        items = self._items
        if items is None:
            walk = _walk(self._points, self._owners, self._wanted, self._key)
            first = self._first
            items = tuple(walk) if first is None else (first, *(r for r in walk if r != first))
            self._items = items
        return items

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self._materialise()[index]

    def __len__(self) -> int:
        return self._wanted

    def __iter__(self) -> Iterator[str]:
        return iter(self._materialise())

    def __contains__(self, value: object) -> bool:
        return value in self._materialise()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RingOrder):
            return self._materialise() == other._materialise()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._materialise() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._materialise())

    def __repr__(self) -> str:
        return repr(self._materialise())
