"""The ``cacheroute`` policy, simulated: the real ``CacheAwarePolicy``, unchanged.

Every request is one ``CacheAwarePolicy.select_hashed`` call with the request's
block hashes (hashed once per shared prefix by ``prompts.PromptHasher``, equal
to what ``select`` would compute) and the simulator's exact in-flight counts, on
a policy whose clock is simulated time. The engines' KV events reach the policy
through ``on_kv_events`` as the same ``KVEventBatch`` structs a live subscriber
decodes, so ownership follows the modelled caches' evictions as it follows real
ones. As in the Ray adapter (``serving/routing/cacheroute.py``), the decision's
``send_order`` is Serve's tier order: a request with a cache key waits (is held)
for its chosen replica while that is at ``max_ongoing_requests``; one without
falls through to the next replica on the ring with room, and is held only when
all are full. A held request goes to the chosen replica when it frees a slot;
live, Serve instead asks the router again after a back-off, which may then
spill it by the load bound with the loads of that moment.

The spill wait (``routing.spill_wait_s``, serving/routing/cacheroute.py) as the adapter
does it: a SPILL is held by the policy (``hold_spill``) and, when owners of the
prefix are on the ring, parked (``Placement.wait_for``) until a request completes
on one of them or the wait times out (``loop.py``); ``decide_again`` then decides
with the loads of that moment and commits a spill. A spill whose every owner
already has a request parked for it is committed at once (``busy``). Only the final
decision is counted under its outcome; ``spill_wait_<result>`` counts how waits
ended.

Outcome labels: the ``router.Outcome`` values; a fall-through is counted under
``fallthrough`` in addition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from bench.sim.block_cache import Allocation
from bench.sim.prompts import SimRequest
from bench.sim.routers.base import Placement
from router import CacheAwarePolicy, Decision, Outcome, PolicyConfig, RouteRequest
from router.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from router.load import InFlightCounts

# A request with full blocks and no session needs nothing else from RouteRequest.
_PLAIN = RouteRequest()


class CacheRouteRouter:
    name = "cacheroute"

    def __init__(self, replicas: Iterable[str], config: PolicyConfig, *,
                 clock: Callable[[], float], kv_events: bool = True,
                 spill_wait_s: float = 0.0) -> None:
        self.policy = CacheAwarePolicy(config, replicas=replicas, clock=clock)
        self.spill_wait_s = spill_wait_s
        self._hold = spill_wait_s > 0
        self._kv_events = kv_events
        self._block_size = config.block_size
        self.outcomes: Counter[str] = Counter()
        # (outcome, replica) -> its Placement: the answers are immutable and few (7 x N),
        # and building one costs more than a tenth of a decision.
        self._placements: dict[tuple[Outcome, str], Placement] = {}
        # Requests parked by the spill wait: per owner, and the owners of each request.
        self._waiting_for: Counter[str] = Counter()
        self._parked: dict[int, frozenset[str]] = {}

    @property
    def replicas(self) -> frozenset[str]:
        return self.policy.replicas

    @staticmethod
    def _route_request(request: SimRequest) -> RouteRequest:
        return (_PLAIN if request.session is None and request.block_hashes
                else RouteRequest(token_ids=request.short_tokens, session_id=request.session))

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        route_request = self._route_request(request)
        decision = self.policy.select_hashed(route_request, request.block_hashes, in_flight,
                                             hold_spill=self._hold)
        if self._hold and decision.outcome is Outcome.SPILL:
            owners = self.policy.spill_owners(route_request, request.block_hashes)
            waiting_for = self._waiting_for
            if owners and not all(waiting_for[o] for o in owners):
                waiting_for.update(owners)
                self._parked[request.index] = owners
                return Placement(None, decision.outcome.value, wait_for=owners)
            if owners:
                self.outcomes["spill_wait_busy"] += 1
            self.policy.commit(route_request, decision, request.block_hashes)
        return self._place(decision, in_flight, max_ongoing)

    def decide_again(self, request: SimRequest, in_flight: InFlightCounts,
                     max_ongoing: int | None, *, woken: bool) -> Placement:
        """After a spill wait: ``woken`` by a completion on an owner, or timed out."""
        route_request = self._route_request(request)
        self._waiting_for.subtract(self._parked.pop(request.index))
        decision = self.policy.select_hashed(route_request, request.block_hashes, in_flight,
                                             hold_spill=True)
        if decision.outcome is Outcome.SPILL:
            self.policy.commit(route_request, decision, request.block_hashes)
        self.outcomes["spill_wait_" + ("owner_hit" if decision.outcome is Outcome.OWNER_HIT
                                       else "spill" if woken else "timeout")] += 1
        return self._place(decision, in_flight, max_ongoing)

    def _place(self, decision: Decision, in_flight: InFlightCounts,
               max_ongoing: int | None) -> Placement:
        chosen = decision.replica_id
        placement = self._placements.get((decision.outcome, chosen))
        if placement is None:
            placement = Placement(chosen, decision.outcome.value)
            self._placements[decision.outcome, chosen] = placement
        outcome = placement.outcome
        self.outcomes[outcome] += 1
        if max_ongoing is None or in_flight.get(chosen, 0) < max_ongoing:
            return placement
        order = decision.send_order  # Serve's tiers: [[chosen]] or [[chosen], [next], ...]
        for replica in order:
            if in_flight.get(replica, 0) < max_ongoing:
                self.outcomes["fallthrough"] += 1
                return Placement(replica, outcome)
        # Held for the chosen replica alone, or (a whole ranked list) for any.
        return Placement(None, outcome,
                         candidates=frozenset(order) if len(order) == 1 else None)

    def on_placed(self, request: SimRequest, replica: str, now_s: float) -> None:
        return None

    def on_kv_events(self, replica: str, allocation: Allocation, now_s: float) -> None:
        if not self._kv_events:
            return
        events: list[BlockStored | BlockRemoved | AllBlocksCleared] = []
        if allocation.evicted:  # vLLM evicts to make room, then stores
            events.append(BlockRemoved(block_hashes=list(allocation.evicted), medium="GPU"))
        if allocation.stored:
            events.append(BlockStored(
                block_hashes=list(allocation.stored), parent_block_hash=None, token_ids=[],
                block_size=self._block_size, lora_id=None, medium="GPU", lora_name=None))
        self.policy.on_kv_events(replica, KVEventBatch(ts=now_s, events=events))
