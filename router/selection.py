"""Selection: the decision for one request, from the index, the ring and the loads.

Algorithm, for a request with prompt blocks ``b0..bn`` (``hashing.py``):

1. OWNER_HIT: the ownership index's longest owned prefix (``ownership.py``), if
   at least ``min_owner_match_blocks`` long, has an owner below the bounded-load
   capacity (``load.py``). Among such owners the least loaded wins, ties broken
   by ring order, so a hot prefix spreads over the replicas that already hold it.
2. Otherwise the ring (``ring.py``) decides. Its key is the request's session
   key when it has a session id and ``session_affinity`` is on (SESSION), else
   the hash of the *first* block (RING_HOME). The first block rather than the
   last makes every request that shares a system prompt share a home, which
   computes that prompt once; a session key instead keeps one conversation,
   whose turns extend each other, on one replica even when all conversations
   share a system prompt. If the home is at capacity the walk continues along
   the ring (SPILL), so a hot key's overflow stays on a few replicas. A request
   whose prefix has owners, all at capacity, that lands on a home holding none of
   it is a SPILL too: the bound, not the ring, sent it where its prefix is not.
   A prefix nobody holds (no owned block, no session) walks the ring with a
   tighter capacity, the mean load (RING_BALANCE past its home): its first
   request misses on every replica alike, so placing it on a replica at or
   below the mean costs no hit, and the prefix's later traffic starts on the
   less loaded side instead of adding to a busy home and spilling from it.
   ``load_floor`` raises the bound's capacity to at least that many requests
   (``load.py``), so at low load a prefix stays on its owners and its home. It
   leaves the mean placement of a new prefix alone: the floor exists to save a
   prefix's hits, and a new prefix has none to save, while placing it by the mean
   is what spreads tenants evenly when the ring's arcs hold unequal numbers.
3. NO_KEY: no full block and no session. Nothing is cacheable, so locality is
   worthless: the least loaded replica, ties broken by ring order from a stable
   hash of the (partial) tokens. Deterministic given the loads.

Every decision is a pure function of the request's block hashes, the index, the
ring and ``in_flight``: two instances with the same replica set, fed the same
requests and loads, decide alike (no randomness, no process-salted hashes).
``Selection`` holds no lock and records nothing: ``policy.py`` calls it under the
policy's lock and then learns the chosen replica.

Cost per decision: hashing (``hashing.py``; for a prompt that repeats or extends
a recent one, mostly packing its ids, about 5 ns a token), an O(log n) index probe
from the tail (one or two probes when the prompt adds a block or none) with an O(1)
TTL check per probed block (``ownership.py``), the least loaded owners, a tie-break
among them along the ring (memoised distances per key, ``ring.py``), a walk of the
ring until a replica has room (usually one step), and a ``learn`` of O(log n) probes
plus the blocks not written within its refresh interval (about 0.12 us a block).
For a hot prefix's k owners (at least 128) the least loaded are read from
a view caught up with the counts that moved since its last decision
(``owner_loads.py``), O(changes) rather than O(k); other prefixes' owners are kept
in ring order from their key (``OwnerOrder``), so the least loaded with its
tie-break is one pass in C over their k counts; nothing is O(N) in the replica
count when ``in_flight`` is an ``InFlightCounts`` over ``replicas`` (``load.py``).
Measured for a 4,096-token prompt whose prefix repeats (``bench/decision_cost.py``,
one core of a 2-CPU Intel Xeon, p50): about 20-23 us at 128- and at 16-token
blocks, of which hashing 12-14; 52-58 us at 16-token blocks when ``learn`` writes
all 256 (a prefix's first decision in a refresh interval). ``ranked``, the full
ring order, is built only when read (``ring.RingOrder``). Hashing and ``learn`` are
the policy's (``policy.py``); the rest is this module's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from itertools import compress, islice, repeat

from router.decision import Decision, PolicyConfig, RouteRequest
from router.hashing import BlockHash
from router.load import load_capacity, total_in_flight
from router.outcome import Outcome
from router.owner_loads import OwnerLoads, OwnerOrder
from router.ownership import OwnershipIndex
from router.ring import EmptyRingError, HashRing, stable_key

_new = object.__new__

# Owners from which a block's loads are kept in a view (owner_loads.py): below it the
# C scan of their counts in ring order (OwnerOrder) costs less than a view's upkeep,
# whose catch-up is Python work per load change. 128: 7% faster than 32 at 1,000
# replicas, with or without other work between decisions (bench.decision_rate_ab
# --between), and 8-12% in the simulator; 256 was slower where a few tenants
# have hundreds of owners each (docs/benchmarks/results.md).
_VIEW_MIN_OWNERS = 128


def _any_in(owners: Collection[str], replicas: Collection[str]) -> bool:
    """Whether an owner is on the ring (owners that all left do not make a spill)."""
    return any(r in replicas for r in owners)


class Selection:
    """Prefix ownership first, then a bounded-load consistent-hash ring (module docstring).

    Reads the policy's ``index`` and ``ring`` (the same objects, changed by the policy
    under its lock) and keeps its own views of hot blocks' owner loads.
    """

    def __init__(self, config: PolicyConfig, ring: HashRing, index: OwnershipIndex) -> None:
        self._config = config
        self._ring = ring
        self._index = index
        # Hot blocks' owners grouped by load, caught up per decision (owner_loads.py).
        self._owner_loads = OwnerLoads(min_owners=_VIEW_MIN_OWNERS)
        # Other blocks' owners in ring order from their key (owner_loads.py).
        self._owner_order = OwnerOrder()

    def decide(
        self,
        request: RouteRequest,
        hashes: Sequence[BlockHash],
        session_key: int | None,
        in_flight: Mapping[str, int],
        replicas: frozenset[str],
    ) -> Decision:
        """The decision for a request with these block hashes and ring key, over the
        replicas on the ring; raises ``EmptyRingError`` with none."""
        if not replicas:
            raise EmptyRingError("no replicas to route to")
        total = total_in_flight(in_flight, replicas)
        capacity = load_capacity(total, len(replicas), self._config.load_epsilon,
                                 self._config.load_floor)
        ring_key = session_key if session_key is not None else (hashes[0] if hashes else None)
        if ring_key is None:
            return self._least_loaded(request, in_flight)
        ring = self._ring

        # The owner map is the index's own (no O(k) copy); it is read before learn().
        matched_blocks, owners = self._index.owners_of_longest_prefix(hashes)
        if matched_blocks >= self._config.min_owner_match_blocks:
            chosen = self._least_loaded_owner(owners, ring_key, in_flight, capacity, replicas,
                                              block=hashes[matched_blocks - 1])
            if chosen is not None:
                return self._decision(chosen, Outcome.OWNER_HIT, matched_blocks,
                                      hashes, ring.order(ring_key, first=chosen))

        if matched_blocks == 0 and session_key is None:
            # Nobody holds any block: place at or below the mean load (module docstring).
            # ``load.choose_bounded`` over ``ring.walk``, stepping in C (ring.py).
            # No floor here: the floor keeps a prefix on the replica that holds it,
            # and a new prefix is held nowhere, so it keeps only the balance.
            found = ring.first_with_room(ring_key, in_flight,
                                         load_capacity(total, len(replicas), 0.0))
            assert found is not None  # the mean is below this capacity too (load.py)
            chosen, spilled = found
            outcome = Outcome.RING_BALANCE if spilled else Outcome.RING_HOME
            return self._decision(chosen, outcome, 0, hashes,
                                  ring.order(ring_key, first=chosen))

        found = ring.first_with_room(ring_key, in_flight, capacity)
        # A full ring walk always finds room (load.py), so found is not None.
        assert found is not None
        chosen, spilled = found
        if spilled or (matched_blocks >= self._config.min_owner_match_blocks
                       and chosen not in owners and _any_in(owners, replicas)):
            # Past a full home, or away from owners that were all full: either way
            # the bound sent the request where its prefix is not (a spill).
            outcome = Outcome.SPILL
        else:
            outcome = Outcome.SESSION if session_key is not None else Outcome.RING_HOME
        matched = matched_blocks if chosen in owners else 0
        return self._decision(chosen, outcome, matched, hashes,
                              ring.order(ring_key, first=chosen))

    def _least_loaded_owner(
        self, owners: Collection[str], ring_key: int, in_flight: Mapping[str, int], capacity: int,
        replicas: frozenset[str], *, block: BlockHash | None = None,
    ) -> str | None:
        """The least loaded owner below ``capacity``, ties going to the first along the
        ring from ``ring_key``; None if every owner is full. ``block``: the block whose
        index owner map ``owners`` is, for the cached view of a hot block's loads.

        The same as ``min()`` over the owners with room taken in ring order. A hot
        block's lowest load and tied owners come from ``OwnerLoads``, which reads only
        the counts that moved since its last decision; other blocks' from their owners
        kept in ring order (``OwnerOrder``: the counts in that order, their minimum and
        its first index, in C); when some owner is off the ring, from three passes in
        C over the owners (loads, their minimum, the tied owners) and a tie-break
        among the tied only.
        """
        if not owners:
            return None
        cached = (self._owner_loads.least_loaded(
            block, owners, in_flight, self._ring, ring_key)  # type: ignore[arg-type]
            if block is not None and len(owners) >= _VIEW_MIN_OWNERS else None)
        if cached is None and block is not None:
            ordered = self._owner_order.least_loaded(
                block, owners, in_flight, self._ring, ring_key)  # type: ignore[arg-type]
            if ordered is not None:
                # Every owner is on the ring: the first at the lowest load, if it has room.
                return ordered[1] if ordered[0] < capacity else None
        first: str | None
        if cached is not None:
            lowest, first = cached
            if lowest >= capacity:
                return None  # then no owner on the ring has room either
        else:
            # map/compress iterate in C; owners iterate in the same order twice.
            loads = list(map(in_flight.get, owners, repeat(0)))
            lowest = min(loads)
            if lowest >= capacity:
                return None  # then no owner on the ring has room either
            if loads.count(lowest) == 1:
                first = next(islice(owners, loads.index(lowest), None))
            else:
                first = self._ring.first_in_ring_order(
                    frozenset(compress(owners, map(lowest.__eq__, loads))), ring_key)
        # The ring order skips replicas off the ring (ejected or removed): None only
        # when no least loaded owner is on it.
        if first is not None and first not in replicas:
            first = None
        if first is None:
            # Every least loaded owner has left the ring (a KV event from a removed
            # replica, say): decide again over the owners still on it.
            on_ring = replicas.intersection(owners)
            return self._least_loaded_owner(on_ring, ring_key, in_flight, capacity, replicas) \
                if len(on_ring) != len(owners) else None
        return first

    def _least_loaded(self, request: RouteRequest, in_flight: Mapping[str, int]) -> Decision:
        tokens = request.token_ids or ()
        # A stable key from the partial block only spreads ties; 0 when no tokens.
        tie_key = stable_key(",".join(map(str, tokens))) if tokens else 0
        order = tuple(self._ring.walk(tie_key))
        chosen = min(order, key=lambda r: in_flight.get(r, 0))
        return self._decision(chosen, Outcome.NO_KEY, 0, [],
                              (chosen, *(r for r in order if r != chosen)))

    @staticmethod
    def _decision(
        chosen: str,
        outcome: Outcome,
        matched_blocks: int,
        hashes: Sequence[BlockHash],
        ranked: Sequence[str],
    ) -> Decision:
        # The frozen dataclass's generated __init__ sets each field through
        # object.__setattr__ (about 0.9 us, a tenth of a decision); filling the new
        # instance's __dict__ sets the same fields in a third of that. Decision has
        # no __post_init__ and no slots, so the result is the same object.
        decision = _new(Decision)
        decision.__dict__.update(replica_id=chosen, outcome=outcome,
                                 matched_blocks=matched_blocks, total_blocks=len(hashes),
                                 ranked=ranked)
        return decision
