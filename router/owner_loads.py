"""The least loaded owners of hot prefixes, kept up to date instead of recomputed.

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

Cost per use: O(1 + changes since the block's last use + new owners) while the view
is current, O(k) to rebuild it (first use, a removal, or more changes since the last
use than ``_REBUILD_RATIO`` per owner or than the change log holds). The least loaded bucket is read in
O(levels) when it empties. Memory: ``max_blocks`` views of O(k) each (LRU). With any
other ``Mapping`` of counts than an ``InFlightCounts`` nothing is cached.

The answer is exactly the plain scan's: the minimum of ``in_flight.get(r, 0)`` over
the owners, and the set of owners at it (``test_owner_loads.py`` compares them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from itertools import islice, repeat

from router.hashing import BlockHash
from router.load import InFlightCounts


# Catching up on more than this many changes per owner costs more than a rebuild.
_REBUILD_RATIO = 4


class _View:
    """One block's owners by load, as of ``in_flight.changed == seen``."""

    __slots__ = ("buckets", "in_flight", "level_of", "lowest", "owners", "removals", "seen",
                 "size")

    def __init__(self, owners: Mapping[str, float], in_flight: InFlightCounts) -> None:
        get = in_flight.get
        self.owners = owners
        self.in_flight = in_flight
        self.removals: int = owners.removals  # type: ignore[attr-defined]
        self.size = len(owners)
        self.seen = in_flight.changed
        self.level_of: dict[str, int] = dict(zip(owners, map(get, owners, repeat(0))))
        buckets: dict[int, set[str]] = {}
        for replica, load in self.level_of.items():
            bucket = buckets.get(load)
            if bucket is None:
                buckets[load] = {replica}
            else:
                bucket.add(replica)
        self.buckets = buckets
        self.lowest = min(buckets)

    def move(self, replica: str, load: int) -> None:
        """Put ``replica`` (an owner) at ``load``, adding it if new."""
        buckets = self.buckets
        old = self.level_of.get(replica)
        if old == load:
            return
        self.level_of[replica] = load
        if old is not None:
            bucket = buckets[old]
            bucket.discard(replica)
            if not bucket:
                del buckets[old]
        bucket = buckets.get(load)
        if bucket is None:
            buckets[load] = {replica}
        else:
            bucket.add(replica)
        if load < self.lowest:
            self.lowest = load
        elif old == self.lowest and old not in buckets:
            self.lowest = min(buckets)


class OwnerLoads:
    """Per hot block, its owners grouped by in-flight count (module docstring).

    Not thread-safe; the policy serialises access.
    """

    __slots__ = ("_max_blocks", "_min_owners", "_views")

    def __init__(self, *, max_blocks: int = 256, min_owners: int = 16) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self._max_blocks = max_blocks
        self._min_owners = min_owners
        self._views: OrderedDict[BlockHash, _View] = OrderedDict()

    def __len__(self) -> int:
        return len(self._views)

    def least_loaded(
        self, block: BlockHash, owners: Mapping[str, float], in_flight: Mapping[str, int]
    ) -> tuple[int, set[str]] | None:
        """``(lowest load, the owners at it)`` for ``block``'s owner map ``owners``
        (an ``OwnershipIndex`` owner map), or None when not cached: fewer than
        ``min_owners`` owners, or counts that are not an ``InFlightCounts``. The set
        is the view's own: read it before the next call and never change it."""
        if len(owners) < self._min_owners or not isinstance(in_flight, InFlightCounts):
            return None
        views = self._views
        view = views.get(block)
        if view is not None and view.owners is owners and view.in_flight is in_flight \
                and view.removals == owners.removals:  # type: ignore[attr-defined]
            behind = in_flight.changed - view.seen
            added = len(owners) - view.size
            # A change costs one set probe, a rebuild a few dict writes per owner.
            if behind > len(in_flight.changes) or behind > _REBUILD_RATIO * len(owners):
                view = None  # a rebuild costs less than catching up would
            else:
                get = in_flight.get
                move = view.move
                if added:
                    # Owners are only appended (ownership._Owners): the new ones are last.
                    for replica in islice(reversed(owners), added):  # type: ignore[call-overload]
                        move(replica, get(replica, 0))
                if behind:
                    level_of = view.level_of
                    # The last ``behind`` changes, newest first: each move reads the
                    # current count, so the order does not matter.
                    for replica in islice(reversed(in_flight.changes), behind):
                        if replica in level_of:
                            move(replica, get(replica, 0))
                view.seen = in_flight.changed
                view.size = len(owners)
            views.move_to_end(block)
        else:
            view = None
        if view is None:
            view = views[block] = _View(owners, in_flight)
            views.move_to_end(block)
            while len(views) > self._max_blocks:
                views.popitem(last=False)
        return view.lowest, view.buckets[view.lowest]
