"""The cache-aware routing policy: one deterministic decision per request, and what
it learns from each.

``CacheAwarePolicy`` ties the parts together behind one lock: the decision
(``selection.py``: prefix ownership first, then a bounded-load consistent-hash
ring), fleet membership and ejection (``membership.py``), and what the policy
learns. The chosen replica ``learn``s the request's blocks (``ownership.py``);
engines' KV events (``kv_events.py``) confirm and evict them, so instances that saw
different traffic converge. With ``hot_prefix_capacity`` set, the request is also
counted in a table of the hottest prefixes per ring key (``hot_prefixes.py``, O(1)
amortised): ``hot_prefixes_of`` names those a joining replica should be sent first
(a prefill each), and ``learn`` records it as their owner once it has them, so their
traffic splits onto it with hits. ``spill_target`` predicts, without changing
anything, where the next request of an owner hit's prefix would spill when this
request filled the prefix's last owner with room: the adapter may prefill the
prefix there first (replication ahead of a spill). A SPILL decided with
``hold_spill`` is recorded only on ``commit`` (the spill wait, ``admission.py``).

What each adapter may call is split by use in ``interface.py``. Two instances with
the same replica set, fed the same requests and loads, make the same decisions.
Cost: a decision's (``selection.py``), plus hashing outside the lock and the
``learn`` of the chosen replica. ``select_hashed`` takes block hashes the caller
already has (a simulator memoising shared prefixes) and decides exactly as
``select`` does. Thread-safe: one lock serialises index and ring access; hashing
runs outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from router.decision import Decision, Placement, PolicyConfig, RouteRequest
from router.hashing import BlockHash, PrefixHasher
from router.hot_prefixes import HotPrefix, HotPrefixTracker
from router.kv_events import AppliedEvents, KVEventBatch, apply_batch
from router.load import load_capacity, total_in_flight
from router.membership import Membership
from router.outcome import Outcome
from router.ownership import OwnershipIndex
from router.ring import HashRing, stable_key
from router.selection import Selection


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
        # Members, the ring over those not ejected, and seats. An ejected member's
        # ownership is kept: a replica that recovers comes back with its cache.
        self._membership = Membership(self._ring)
        # The replicas on the ring, read by every decision (``Membership.on_ring``).
        self._replicas = self._membership.on_ring
        self._index = OwnershipIndex(
            max_entries=config.max_index_blocks, ttl_s=config.ownership_ttl_s,
            refresh_s=config.ownership_refresh_s, clock=clock,
        )
        self._clock = clock
        self._selection = Selection(config, self._ring, self._index)
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
        return self._membership.ejected

    # --- fleet events (``interface.FleetEvents``) -------------------------------------

    def set_replicas(self, replica_ids: Iterable[str],
                     seats: Mapping[str, str] | None = None) -> None:
        """Replace the replica set; departed replicas' ownership is cleared. An
        ejected replica stays out of the ring while it remains a member. ``seats``
        names stable ring positions (``ring.rank_seat``) for some replicas."""
        wanted = frozenset(replica_ids)
        with self._lock:
            for gone in self._membership.set(wanted, seats):
                self._index.clear(gone)
            self._replicas = self._membership.on_ring

    def on_replica_removed(self, replica_id: str) -> None:
        with self._lock:
            self._index.clear(replica_id)
            self._membership.remove(replica_id)
            self._replicas = self._membership.on_ring

    def eject(self, replica_id: str) -> bool:
        """Take a member out of the ring (it is hung) without forgetting what it
        caches: its arcs go to the next replicas along the ring, exactly as on a
        removal, until ``readmit``. Refused (False) for a non-member, a replica
        already out, or the last replica on the ring (``membership.py``)."""
        with self._lock:
            ejected = self._membership.eject(replica_id)
            self._replicas = self._membership.on_ring
            return ejected

    def readmit(self, replica_id: str) -> bool:
        """Put an ejected replica back on the ring; it gets back exactly the arcs it
        had (the ring is a function of its members). False if it was not out."""
        with self._lock:
            readmitted = self._membership.readmit(replica_id)
            self._replicas = self._membership.on_ring
            return readmitted

    def on_kv_events(self, replica_id: str, batch: KVEventBatch) -> AppliedEvents:
        """Apply one engine's KV-event batch (safe from a subscriber thread)."""
        with self._lock:
            return apply_batch(self._index, replica_id, batch, block_size=self._config.block_size)

    # --- reads (``interface.PrefixReads``) -----------------------------------------

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
            if replica_id not in self._membership.members or not hashes:
                return 0
            self._index.learn(replica_id, hashes)
        return len(hashes)

    def forget_prefix(self, request: RouteRequest) -> int:
        """Forget every replica's ownership of the request's blocks (a registered
        prefix was withdrawn); returns how many blocks were known."""
        hashes = self.block_hashes(request)
        with self._lock:
            return self._index.drop(hashes)

    # --- decisions and what they record ----------------------------------------------

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
            decision = self._selection.decide(request, hashes, session_key, in_flight,
                                              self._replicas)
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
            if decision.replica_id in self._membership.members:
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
