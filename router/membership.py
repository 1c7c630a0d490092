"""Fleet membership: which replicas exist, which of them are on the ring, and where.

A *member* is a replica the deployment has; the *ring* holds the members not
*ejected*. Ejection takes a hung member off the ring without forgetting what it
caches (the policy keeps its ownership), so its arcs pass to the next replicas
along the ring exactly as on a removal, and come back unchanged on ``readmit``
(the ring is a function of its members and their seats). A *seat* is a stable ring
position for a member (``ring.rank_seat``): a replacement that takes a dead
replica's rank takes its arcs. Members without one sit at their own id.

Rules: the last replica on the ring is never ejected (an empty ring fails every
request, a hung replica may recover); if every member ends up ejected anyway (a
membership update removed the others), all come back, since ejection is advice,
not a failure.

Not thread-safe: the policy (``policy.py``) calls it under its lock and clears the
ownership of the members that left. Cost: O(N log N) per change (the ring's
rebuild, ``ring.py``); nothing per decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.ring import HashRing


class Membership:
    def __init__(self, ring: HashRing) -> None:
        self._ring = ring
        self.members: frozenset[str] = ring.replicas
        # Always a subset of ``members``.
        self.ejected: frozenset[str] = frozenset()
        self.on_ring: frozenset[str] = ring.replicas
        self._seats: dict[str, str] = {}

    def set(self, wanted: frozenset[str], seats: Mapping[str, str] | None) -> frozenset[str]:
        """Replace the members; returns those that left. An ejected member stays out
        while it remains a member; ``seats`` (None: unchanged) for some members."""
        gone = self.members - wanted
        self.members = wanted
        if seats is not None:
            self._seats = {r: s for r, s in seats.items() if r in wanted}
        self.ejected &= wanted
        self._apply()
        return gone

    def remove(self, replica_id: str) -> None:
        self.members -= {replica_id}
        self.ejected -= {replica_id}
        self._apply()

    def eject(self, replica_id: str) -> bool:
        """Take a member off the ring; False for a non-member, one already off, or
        the last replica on the ring."""
        if replica_id not in self.on_ring or len(self.on_ring) == 1:
            return False
        self.ejected |= {replica_id}
        self._apply()
        return True

    def readmit(self, replica_id: str) -> bool:
        """Put an ejected member back with exactly its arcs; False if it was not out."""
        if replica_id not in self.ejected:
            return False
        self.ejected -= {replica_id}
        self._apply()
        return True

    def _apply(self) -> None:
        on_ring = self.members - self.ejected
        if not on_ring and self.members:
            # Every member ejected (they hung one after another): route to all of
            # them rather than to none.
            self.ejected = frozenset()
            on_ring = self.members
        self._ring.set_replicas(on_ring, self._seats)
        self.on_ring = on_ring
