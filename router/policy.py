"""The cache-aware routing policy: one deterministic decision per request.

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

The chosen replica then ``learn``s the request's blocks. With
``hot_prefix_capacity`` set, the request is also counted in a table of the hottest
prefixes per ring key (``hot_prefixes.py``, O(1) amortised): ``hot_prefixes_of`` names
those a joining replica should be sent first (a prefill each), and ``learn`` records
it as their owner once it has them, so their traffic splits onto it with hits.
``spill_target`` predicts, without changing anything, where the next request of an
owner hit's prefix would spill when this request filled the prefix's last owner with
room: the adapter may prefill the prefix there first (replication ahead of a spill).
Two instances with the
same replica set, fed the same requests and loads, make the same decisions: no
randomness and no process-salted hashes; KV events (``kv_events.py``) make
instances that saw different traffic converge.

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
ring order, is built only when read (``ring.RingOrder``). ``select_hashed`` takes block
hashes the caller already has (a simulator memoising shared prefixes) and decides
exactly as ``select`` does. Thread-safe: one lock serialises index and
ring access; hashing runs outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from itertools import compress, islice, repeat

from router.decision import Decision, Placement, PolicyConfig, RouteRequest
from router.hashing import BlockHash, PrefixHasher
from router.hot_prefixes import HotPrefix, HotPrefixTracker
from router.kv_events import AppliedEvents, KVEventBatch, apply_batch
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
# have hundreds of owners each (docs/benchmarks.md, "Decision rate amid other work").
_VIEW_MIN_OWNERS = 128


def _any_in(owners: Collection[str], replicas: Collection[str]) -> bool:
    """Whether an owner is on the ring (owners that all left do not make a spill)."""
    return any(r in replicas for r in owners)


class CacheAwarePolicy:
    """Prefix-ownership first, then a bounded-load consistent-hash ring."""

    def __init__(
        self,
        config: PolicyConfig,
        *,
        replicas: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._hasher = PrefixHasher(config.block_size, config.hash_seed)
        self._ring = HashRing(replicas, virtual_nodes=config.virtual_nodes)
        self._replicas = self._ring.replicas
        # Replicas that exist but are out of the ring (hung, ``eject``); always a
        # subset of ``_members``. Their ownership is kept: a replica that recovers
        # comes back with its cache, and the ring hands its arcs straight back.
        self._members = self._replicas
        self._ejected: frozenset[str] = frozenset()
        # Member -> stable ring seat (``ring.rank_seat``); members without one sit at
        # their own id.
        self._seats: dict[str, str] = {}
        self._index = OwnershipIndex(
            max_entries=config.max_index_blocks, ttl_s=config.ownership_ttl_s,
            refresh_s=config.ownership_refresh_s, clock=clock,
        )
        self._clock = clock
        # Hot blocks' owners grouped by load, caught up per decision (owner_loads.py).
        self._owner_loads = OwnerLoads(min_owners=_VIEW_MIN_OWNERS)
        # Other blocks' owners in ring order from their key (owner_loads.py).
        self._owner_order = OwnerOrder()
        self._hot = (HotPrefixTracker(capacity=config.hot_prefix_capacity,
                                      block_size=config.block_size,
                                      max_blocks=config.hot_prefix_max_blocks,
                                      half_life_s=config.hot_prefix_half_life_s)
                     if config.hot_prefix_capacity else None)
        self._lock = threading.Lock()

    @property
    def config(self) -> PolicyConfig:
        return self._config

    @property
    def replicas(self) -> frozenset[str]:
        return self._replicas

    @property
    def ejected(self) -> frozenset[str]:
        """Replicas that exist but are out of the ring until ``readmit``."""
        return self._ejected

    def set_replicas(self, replica_ids: Iterable[str],
                     seats: Mapping[str, str] | None = None) -> None:
        """Replace the replica set; departed replicas' ownership is cleared. An
        ejected replica stays out of the ring while it remains a member. ``seats``
        names stable ring positions (``ring.rank_seat``) for some replicas."""
        wanted = frozenset(replica_ids)
        with self._lock:
            for gone in self._members - wanted:
                self._index.clear(gone)
            self._members = wanted
            if seats is not None:
                self._seats = {r: s for r, s in seats.items() if r in wanted}
            self._ejected &= wanted
            self._apply_membership()

    def on_replica_removed(self, replica_id: str) -> None:
        with self._lock:
            self._index.clear(replica_id)
            self._members -= {replica_id}
            self._ejected -= {replica_id}
            self._apply_membership()

    def eject(self, replica_id: str) -> bool:
        """Take a member out of the ring (it is hung) without forgetting what it
        caches: its arcs go to the next replicas along the ring, exactly as on a
        removal, until ``readmit``. Refused (False) for a non-member, a replica
        already out, or the last replica on the ring: an empty ring would fail every
        request at once, while a hung last replica may still recover."""
        with self._lock:
            if replica_id not in self._replicas or len(self._replicas) == 1:
                return False
            self._ejected |= {replica_id}
            self._apply_membership()
            return True

    def readmit(self, replica_id: str) -> bool:
        """Put an ejected replica back on the ring; it gets back exactly the arcs it
        had (the ring is a function of its members). False if it was not out."""
        with self._lock:
            if replica_id not in self._ejected:
                return False
            self._ejected -= {replica_id}
            self._apply_membership()
            return True

    def _apply_membership(self) -> None:
        on_ring = self._members - self._ejected
        if not on_ring and self._members:
            # Every member ejected (they hung one after another): route to all of
            # them rather than to none; ejection is advice, not a failure.
            self._ejected = frozenset()
            on_ring = self._members
        self._ring.set_replicas(on_ring, self._seats)
        self._replicas = on_ring

    def on_kv_events(self, replica_id: str, batch: KVEventBatch) -> AppliedEvents:
        """Apply one engine's KV-event batch (safe from a subscriber thread)."""
        with self._lock:
            return apply_batch(self._index, replica_id, batch, block_size=self._config.block_size)

    def owned_blocks(self) -> dict[str, int]:
        """Blocks the ownership index attributes to each replica (telemetry)."""
        with self._lock:
            return self._index.blocks_by_replica()

    def placement(self, request: RouteRequest) -> Placement | None:
        """Where the request's prompt, taken as a prefix, lives now; routes and learns
        nothing. None when it has no full block or there are no replicas."""
        hashes = self.block_hashes(request)
        if not hashes:
            return None
        with self._lock:
            if not self._replicas:
                return None
            match = self._index.longest_prefix(hashes)
            holders = match.owners if match.matched_blocks == len(hashes) else frozenset()
            # The holder a zero-load OWNER_HIT picks (first in ring order), else the ring home.
            home = next((r for r in self._ring.walk(hashes[0]) if r in holders),
                        self._ring.owner(hashes[0]))
        return Placement(home=home, holders=holders, total_blocks=len(hashes))

    def hot_prefixes_of(self, replica_id: str, limit: int) -> list[HotPrefix]:
        """The ``limit`` hottest prefixes whose ring home is now ``replica_id`` (the
        arc a joining replica took over), hottest first; empty when not tracked."""
        if self._hot is None:
            return []
        with self._lock:
            return self._hot.arc_of(replica_id, self._ring, limit, now=self._clock())

    def spill_target(self, request: RouteRequest, decision: Decision,
                     in_flight: Mapping[str, int]) -> tuple[str, int] | None:
        """Where the next request with this decision's prefix would spill, if that
        replica holds none of it: ``(replica, blocks)``, the replica to prefill the
        prefix's first ``blocks`` blocks on now, while it has room, so that the spill
        finds them cached instead of computing them (a replication ahead of the spill).

        Only for an OWNER_HIT (the prefix has owners; a spill computes it anyway),
        and only when, counting this request on its replica, every owner on the ring
        is at the bounded-load capacity the next request would see. ``in_flight`` is
        the map the decision was made with. None otherwise, and when the spill would
        land on an owner. Reads the index and the ring, changes nothing: O(1) when
        the chosen replica still has room, else an index probe, the prefix's k owners'
        loads and a walk of the ring, plus O(N) for the counts after this request.
        """
        if decision.outcome is not Outcome.OWNER_HIT or decision.matched_blocks < 1:
            return None
        chosen = decision.replica_id
        with self._lock:
            replicas = self._replicas
            if chosen not in replicas:
                return None
            total = total_in_flight(in_flight, replicas) + 1
            capacity = load_capacity(total, len(replicas), self._config.load_epsilon,
                                     self._config.load_floor)
            if in_flight.get(chosen, 0) + 1 < capacity:
                return None  # the owner keeps room: the next request is a hit there
        hashes = self.block_hashes(request)  # outside the lock, as in ``select``
        if len(hashes) < decision.matched_blocks:
            return None
        session_key = self._session_key(request)
        ring_key = session_key if session_key is not None else hashes[0]
        after = dict(in_flight)
        after[chosen] = after.get(chosen, 0) + 1
        with self._lock:
            if self._replicas is not replicas:
                return None  # membership moved meanwhile: the next decision sees it
            owners = self._index.owners(hashes[decision.matched_blocks - 1])
            if any(after.get(o, 0) < capacity for o in owners if o in replicas):
                return None  # another owner has room: the next request goes there
            found = self._ring.first_with_room(ring_key, after, capacity)
        if found is None or found[0] in owners:
            return None
        return found[0], decision.matched_blocks

    def learn(self, replica_id: str, request: RouteRequest) -> int:
        """Record that ``replica_id`` now holds the request's full blocks (a prefill
        sent to it outside ``select``, a prewarm, completed); returns the blocks
        learned, 0 for a replica that is no longer a member."""
        hashes = self.block_hashes(request)
        with self._lock:
            if replica_id not in self._members or not hashes:
                return 0
            self._index.learn(replica_id, hashes)
        return len(hashes)

    def forget_prefix(self, request: RouteRequest) -> int:
        """Forget every replica's ownership of the request's blocks (a registered
        prefix was withdrawn); returns how many blocks were known."""
        hashes = self.block_hashes(request)
        with self._lock:
            return self._index.drop(hashes)

    def block_hashes(self, request: RouteRequest) -> list[BlockHash]:
        """The engine's hashes of the request's full prompt blocks."""
        if not request.token_ids:
            return []
        return self._hasher.block_hashes(
            request.token_ids,
            cache_salt=request.cache_salt,
            lora_name=request.lora_name,
            lora_path=request.lora_path,
        )

    def select(self, request: RouteRequest, in_flight: Mapping[str, int], *,
               hold_spill: bool = False) -> Decision:
        """Choose a replica; ``in_flight`` maps replica id to its running requests
        (missing ids count as 0). Raises ``EmptyRingError`` with no replicas.

        The choice is recorded (the chosen replica is learned as the prefix's owner),
        except a SPILL with ``hold_spill``: its caller may wait for an owner to free
        a slot and decide again (the spill wait), and ``commit``s the spill if it
        takes it."""
        return self.select_hashed(request, self.block_hashes(request), in_flight,
                                  hold_spill=hold_spill)

    def select_hashed(
        self, request: RouteRequest, hashes: Sequence[BlockHash], in_flight: Mapping[str, int],
        *, hold_spill: bool = False,
    ) -> Decision:
        """``select`` with the request's block hashes already computed.

        ``hashes`` must equal ``block_hashes(request)``; the decision is then the
        one ``select`` makes (``select`` is this method after hashing).
        """
        # Most requests carry no session: no call on their path.
        session_key = (self._session_key(request) if request.session_id is not None
                       else None)
        with self._lock:
            decision = self._decide(request, hashes, session_key, in_flight)
            if hashes and not (hold_spill and decision.outcome is Outcome.SPILL):
                self._record(decision.replica_id, request, hashes, session_key)
        return decision

    def commit(self, request: RouteRequest, decision: Decision,
               hashes: Sequence[BlockHash] | None = None) -> None:
        """Record a decision ``select`` held (``hold_spill``) as it records its own:
        the chosen replica now holds the request's blocks, and the prefix was asked
        for once more (hot-prefix tracking). ``hashes``: the request's block hashes,
        when already computed."""
        if hashes is None:
            hashes = self.block_hashes(request)
        if not hashes:
            return
        session_key = self._session_key(request)
        with self._lock:
            if decision.replica_id in self._members:
                self._record(decision.replica_id, request, hashes, session_key)

    def _session_key(self, request: RouteRequest) -> int | None:
        """The ring key of the request's session, when sessions route (None otherwise)."""
        if self._config.session_affinity and request.session_id is not None:
            return stable_key(request.session_id)
        return None

    def _record(self, replica_id: str, request: RouteRequest, hashes: Sequence[BlockHash],
                session_key: int | None) -> None:
        self._index.learn(replica_id, hashes)
        if self._hot is not None:
            self._hot.observe(
                session_key if session_key is not None else hashes[0],
                request.token_ids or (), hashes, now=self._clock(),
                cache_salt=request.cache_salt, lora_name=request.lora_name,
                lora_path=request.lora_path)

    def spill_owners(self, request: RouteRequest,
                     hashes: Sequence[BlockHash] | None = None) -> frozenset[str]:
        """The replicas on the ring holding the request's longest known prefix (of at
        least ``min_owner_match_blocks`` blocks): those a SPILL turned it away from
        because each was at the load bound. Empty when no such prefix is known.
        ``hashes``: the request's block hashes, when already computed."""
        if hashes is None:
            hashes = self.block_hashes(request)
        if not hashes:
            return frozenset()
        with self._lock:
            matched, owners = self._index.owners_of_longest_prefix(hashes)
            if matched < self._config.min_owner_match_blocks:
                return frozenset()
            return self._replicas.intersection(owners)

    def _decide(
        self,
        request: RouteRequest,
        hashes: Sequence[BlockHash],
        session_key: int | None,
        in_flight: Mapping[str, int],
    ) -> Decision:
        replicas = self._replicas
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
            chosen = self._least_loaded_owner(owners, ring_key, in_flight, capacity,
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
        *, block: BlockHash | None = None,
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
        replicas = self._replicas
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
            return self._least_loaded_owner(on_ring, ring_key, in_flight, capacity) \
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
