"""The least loaded owners of a prefix: hot prefixes' kept up to date instead of
recomputed, other prefixes' read in ring order.

A decision for a prefix with k owners needs the owners with the fewest requests in
flight. Reading k counts costs about 60 ns each at N = 1,000 (the counts and owner
maps are spread over memory), and a hot prefix has hundreds of owners, so reading
them all dominated a decision. Between two requests for the same hot prefix only a
few counts move: each decision adds one request and each finished request removes
one. So per hot block (at least ``min_owners`` owners) this keeps a view of its
owners grouped by load, and on each use reads only what changed since the last:

* counts: ``InFlightCounts.changes``/``changed`` (``load.py``) name the replicas whose
  counts moved; those that own the block are moved to their bucket, O(changes);
* owners: an owner map only grows at its end and counts its removals
  (``ownership._Owners``): with no removal since, the new owners are its last
  ones, O(new); after a removal (TTL, eviction event) the view is rebuilt, O(k).

A view pays only for a block decided often: catching up costs O(changes since its
last use), and a lukewarm block is far behind at each use. So a block gets a view
at a use that comes within ``_CATCH_UP_PER_OWNER * k`` changes of its previous one,
keeps it while its uses do, and is otherwise answered None: the caller reads the k
counts, as it does for blocks with fewer than ``min_owners`` owners.
Those reads go through ``OwnerOrder`` (below): per block, its owners sorted along the
ring from the request's key once, so the least loaded owner with its tie-break is one
pass in C over k counts (``min`` keyed by the count), with no tie-break step.

The tie-break among the t owners at the lowest load goes along the ring from the
request's key: for few tied, through the ring's memoised distances (O(t)); for many,
as the first tied owner in the view's owners sorted along the ring once per key
(about k / t steps in C, against the ring's N / t point steps).

Cost per use: O(1 + changes since the last use + new owners) with a current view,
plus the tie-break; O(k) to build a view, O(k log k) to sort its owners along the
ring (again after an owner joins or the ring changes); the least loaded bucket is
found again in O(levels) when it empties. Memory: ``max_blocks`` views of O(k) each
and ``4 * max_blocks`` last-use marks (LRU). With any other ``Mapping`` of counts
than an ``InFlightCounts`` nothing is kept. ``OwnerOrder``: O(k) in C per use while a block's order
is valid, O(k log k) to order it again after an owner joined or left, another key or
a ring change; ``max_blocks`` (4,096) orders of O(k) each, with any ``Mapping``.

The answer is exactly the plain scan's: the minimum of ``in_flight.get(r, 0)`` over
the owners, and the first owner at it along the ring walk from the key, None if none
of them is on the ring (``test_owner_loads.py`` compares them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from itertools import compress, islice, repeat
from typing import cast

from router.hashing import BlockHash
from router.load import InFlightCounts
from router.ring import HashRing

# A view catches up on at most this many changes per owner; a block further behind is
# decided by reading its owners' counts. A change (a set probe in C) costs about a
# quarter of an owner read by the scan at N = 1,000 (1 and 2 did worse, 8 and 16 no better).
_CATCH_UP_PER_OWNER = 4


class _View:
    """One block's owners by load, as of ``in_flight.changed == seen``."""

    __slots__ = ("buckets", "in_flight", "level_of", "lowest", "order", "order_epoch",
                 "order_key", "owners", "removals", "seen", "size")

    def __init__(self, owners: Mapping[str, float], in_flight: InFlightCounts) -> None:
        get = in_flight.get
        self.owners = owners
        self.in_flight = in_flight
        self.removals: int = owners.removals  # type: ignore[attr-defined]
        self.size = len(owners)
        self.seen = in_flight.changed
        loads = list(map(get, owners, repeat(0)))
        self.level_of: dict[str, int] = dict(zip(owners, loads))
        # One pass in C per distinct load (a few) rather than one in Python per owner.
        self.buckets = {load: set(compress(owners, map(load.__eq__, loads)))
                        for load in set(loads)}
        self.lowest = min(self.buckets)
        # The owners on the ring in ring order from ``order_key`` at ring epoch
        # ``order_epoch``; None until a tie-break needs it, or after an owner joined.
        self.order: list[str] | None = None
        self.order_key = 0
        self.order_epoch = -1

    def first_tied(self, ring: HashRing, key: int) -> str | None:
        """The first owner at the lowest load along ``ring`` from ``key``; None if
        none of them is on the ring."""
        tied = self.buckets[self.lowest]
        if len(tied) == 1:
            (only,) = tied
            return only if only in ring else None
        if len(tied) * len(tied) <= len(self.level_of):
            # Few tied among many owners: the ring's memoised distances of the tied.
            return ring.first_in_ring_order(tied, key)
        # Many tied: the first of the ring-ordered owners that is tied, about
        # k / t steps in C for t of k owners tied, instead of the ring's N / t.
        order = self.order
        if order is None or self.order_key != key or self.order_epoch != ring.epoch:
            order = self.order = ring.in_ring_order(self.level_of.keys(), key)
            self.order_key, self.order_epoch = key, ring.epoch
        return next(filter(tied.__contains__, order), None)

    def move(self, replica: str, load: int) -> None:
        """Put ``replica`` (an owner) at ``load``, adding it if new."""
        buckets = self.buckets
        old = self.level_of.get(replica)
        if old == load:
            return
        self.level_of[replica] = load
        if old is not None:
            left = buckets[old]
            left.discard(replica)
            if not left:
                del buckets[old]
        joined = buckets.get(load)
        if joined is None:
            buckets[load] = {replica}
        else:
            joined.add(replica)
        if load < self.lowest:
            self.lowest = load
        elif old == self.lowest and old not in buckets:
            self.lowest = min(buckets)


class OwnerLoads:
    """Per hot block, its owners grouped by in-flight count (module docstring).

    Not thread-safe; the policy serialises access.
    """

    __slots__ = ("_max_blocks", "_min_owners", "_seen", "_views")

    def __init__(self, *, max_blocks: int = 256, min_owners: int = 16) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self._max_blocks = max_blocks
        self._min_owners = min_owners
        self._views: OrderedDict[BlockHash, _View] = OrderedDict()
        # Blocks without a view -> ``InFlightCounts.changed`` at their last use.
        self._seen: OrderedDict[BlockHash, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._views)

    def least_loaded(
        self, block: BlockHash, owners: Mapping[str, float], in_flight: Mapping[str, int],
        ring: HashRing, key: int,
    ) -> tuple[int, str | None] | None:
        """``(lowest load, first owner at it along ring from key)`` for ``block``'s
        owner map ``owners`` (an ``OwnershipIndex`` owner map), the first being None
        when no owner at the lowest load is on the ring. None when the caller should
        read the counts itself: fewer than ``min_owners`` owners, counts that are not
        an ``InFlightCounts``, or a block not hot enough for a view to pay (module
        docstring)."""
        if len(owners) < self._min_owners or not isinstance(in_flight, InFlightCounts):
            return None
        views = self._views
        changed = in_flight.changed
        most = min(len(in_flight.changes), _CATCH_UP_PER_OWNER * len(owners))
        view = views.get(block)
        if view is not None:
            views.move_to_end(block)
            behind = changed - view.seen
            if view.owners is owners and view.in_flight is in_flight and behind <= most \
                    and view.removals == owners.removals:  # type: ignore[attr-defined]
                self._catch_up(view, owners, in_flight, behind)
                return view.lowest, view.first_tied(ring, key)
            # Stale (an owner removed, other counts) or too far behind: read the counts
            # once; a view is built again only if the next use comes soon enough.
            del views[block]
            seen: int | None = view.seen if view.owners is owners else None
        else:
            seen = self._seen.pop(block, None)
        if seen is not None and changed - seen <= most:
            view = views[block] = _View(owners, in_flight)
            while len(views) > self._max_blocks:
                evicted, old = views.popitem(last=False)
                self._remember(evicted, old.seen)
            return view.lowest, view.first_tied(ring, key)
        self._remember(block, changed)
        return None

    def _remember(self, block: BlockHash, seen: int) -> None:
        """Note when ``block`` was last decided, to tell at its next use how hot it is."""
        remembered = self._seen
        remembered[block] = seen
        while len(remembered) > self._max_blocks * 4:
            remembered.popitem(last=False)

    @staticmethod
    def _catch_up(view: _View, owners: Mapping[str, float], in_flight: InFlightCounts,
                  behind: int) -> None:
        get = in_flight.get
        move = view.move
        added = len(owners) - view.size
        if added:
            view.order = None  # the new owners are not in it
            # Owners are only appended (ownership._Owners): the new ones are last.
            for replica in islice(reversed(cast("dict[str, float]", owners)), added):
                move(replica, get(replica, 0))
        if behind:
            # The owners among the last ``behind`` changes, found in C; each move reads
            # the current count, so neither order nor repeats matter.
            moved = view.level_of.keys() & set(islice(reversed(in_flight.changes), behind))
            for replica in moved:
                move(replica, get(replica, 0))
        view.seen = in_flight.changed
        view.size = len(owners)


class OwnerOrder:
    """Per block, its owners in ring order from the request's key, so that the least
    loaded owner, ties going to the first along the ring, is one pass in C over their
    counts (``least_loaded``), with no tie-break step.

    A block's order stays valid while its owner map, the key and the ring do: the
    key of a block without a session is its chain's first block, the same for every
    request that reaches it, and an owner map changes only when a decision or a KV
    event adds or removes an owner. Built with the ring's memoised distances
    (``HashRing.in_ring_order``, O(k log k)), kept for ``max_blocks`` blocks (FIFO:
    a block pushed out is ordered again at its next use). An entry holds its owner
    map, so at most ``max_blocks`` maps the index dropped stay in memory until pushed out.

    Not thread-safe; the policy serialises access.
    """

    __slots__ = ("_entries", "_max_blocks")

    def __init__(self, *, max_blocks: int = 4096) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self._max_blocks = max_blocks
        # Block -> (owner map, its size, its removals, key, ring epoch, ordered owners
        # or None when an owner is off the ring).
        self._entries: dict[BlockHash, tuple[Mapping[str, float], int, int, int, int,
                                             list[str] | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def least_loaded(
        self, block: BlockHash, owners: Mapping[str, float], in_flight: Mapping[str, int],
        ring: HashRing, key: int,
    ) -> tuple[int, str] | None:
        """``(lowest load, first owner at it along ring from key)`` over ``block``'s
        owner map ``owners`` (an ``OwnershipIndex`` owner map, not empty), loads being
        ``in_flight.get(r, 0)``. None when an owner is off the ring: the caller then
        decides which owners count (``CacheAwarePolicy._least_loaded_owner``)."""
        entry = self._entries.get(block)
        removals: int = owners.removals  # type: ignore[attr-defined]
        if entry is None or entry[0] is not owners or entry[1] != len(owners) \
                or entry[2] != removals or entry[3] != key or entry[4] != ring.epoch:
            order: list[str] | None = ring.in_ring_order(owners, key)
            if len(order) != len(owners):  # type: ignore[arg-type]
                order = None
            entries = self._entries
            entries.pop(block, None)  # re-inserted last: pushed out after newer blocks
            entries[block] = (owners, len(owners), removals, key, ring.epoch, order)
            if len(entries) > self._max_blocks:
                del entries[next(iter(entries))]
        else:
            order = entry[5]
        if order is None:
            return None
        # Every owner is in ``order``, in ring order: the first at the lowest load wins,
        # and ``min`` keeps the first of equal keys. One pass in C with no list of
        # loads: a third less than reading them all, then their minimum and its index.
        get = in_flight.get
        try:
            first = min(order, key=get)
        except TypeError:  # an owner without a count (None): it counts as 0
            loads = list(map(get, order, repeat(0)))
            lowest = min(loads)
            return lowest, order[loads.index(lowest)]
        return get(first, 0), first
