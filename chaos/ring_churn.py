"""How many routing keys a membership change moves: the ring's side of a fault.

The router's ring (``router.ring.HashRing``, the same class and virtual-node count
the ``cacheroute`` policy uses) is built on the real replica ids before the fault
and after recovery; the fraction of a fixed sample of keys whose home replica
differs is ``keys_moved_fraction``. Keys are ``stable_key("drill-key:i")``,
64-bit positions spread over the ring like the policy's block hashes.

What to expect: removing one of N replicas moves exactly its share (~1/N);
adding one moves ~1/(N+1). A restart gives the replica a new Serve id, which on a
ring of ids would move both, about 1/N + (N-1)/N**2; the router places replicas by
their deployment *rank* instead (``router.ring.rank_seat``), which the replacement
inherits, so the drill compares seats and reports the peak over the drill
(``peak_keys_moved``): the dead replica's share while it is gone. Cost: O(K log(V*N)) for K
sample keys (20,000 by default: a standard error of 0.35 points at 1/N = 0.5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from router.decision import PolicyConfig
from router.ring import HashRing, stable_key

DEFAULT_SAMPLE_KEYS = 20_000
# The goal: a fault may move at most 10% more than one replica's share.
MOVED_BOUND_FACTOR = 1.1


def sample_keys(count: int = DEFAULT_SAMPLE_KEYS) -> list[int]:
    return [stable_key(f"drill-key:{i}") for i in range(count)]


def keys_moved_fraction(before: Iterable[str], after: Iterable[str], *,
                        keys: list[int] | None = None,
                        virtual_nodes: int = PolicyConfig().virtual_nodes) -> float | None:
    """Fraction of ``keys`` whose ring home differs between the two memberships;
    None when either is empty (no ring to compare)."""
    ring_before = HashRing(before, virtual_nodes=virtual_nodes)
    ring_after = HashRing(after, virtual_nodes=virtual_nodes)
    if not len(ring_before) or not len(ring_after):
        return None
    keys = sample_keys() if keys is None else keys
    if not keys:
        return None
    moved = sum(1 for k in keys if ring_before.owner(k) != ring_after.owner(k))
    return moved / len(keys)


def peak_keys_moved(before: Sequence[str], memberships: Iterable[Sequence[str]], *,
                    keys: list[int] | None = None) -> float | None:
    """The most keys any membership seen during the drill had moved away from
    ``before``: during an outage the dead replica's keys sit on its neighbours, and
    once a replacement takes its seat they come back (so comparing only the ends
    would report 0). Memberships are ring seats (``ReplicaInfo.seat``); empty ones
    (nothing running) and repeats are skipped. None when nothing was compared."""
    keys = sample_keys() if keys is None else keys
    seen: set[tuple[str, ...]] = set()
    peak: float | None = None
    for members in memberships:
        key = tuple(sorted(members))
        if not key or key in seen:
            continue
        seen.add(key)
        moved = keys_moved_fraction(before, key, keys=keys)
        if moved is not None and (peak is None or moved > peak):
            peak = moved
    return peak


def moved_bound(replicas: int) -> float:
    """``1.1 / N``: the most a single-replica fault should move, N the replicas before."""
    return MOVED_BOUND_FACTOR / replicas
