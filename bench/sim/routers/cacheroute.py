"""The ``cacheroute`` policy, simulated: the real ``CacheAwarePolicy`` and the real
waiting protocol (``router.Admission``), unchanged.

Every request is admitted with its block hashes (hashed once per shared prefix by
``prompts.PromptHasher``, equal to what ``select`` would compute) and the simulator's
exact in-flight counts, on a policy whose clock is simulated time. The engines' KV
events reach the policy through ``on_kv_events`` as the same ``KVEventBatch`` structs
a live subscriber decodes, so ownership follows the modelled caches' evictions as it
follows real ones.

Waits are the live adapter's (serving/routing/cacheroute.py), from the same module
(router/admission.py): a request with a cache key whose chosen replica is at
``max_ongoing_requests`` is held in that replica's FIFO queue and decided again with
the loads of the moment a completion there wakes it; with ``spill_wait_s`` a spill
parks on its prefix's owners first. The loop (``loop.py``) reports completions
(``on_completed``: one wake each, to the router instance that sent the request) and
resumes what they wake, or what reached its deadline (``resume``).

One difference from live, on purpose: a slot wait has no time limit here. Live, the
limit (``router.SLOT_WAIT_S``) recovers a missed wake-up, and the requests beyond
Serve's routing tasks (2 per replica, 50 at most) wait in Serve's own FIFO queue rather
than in the router's; the simulator misses no completion and runs no routing tasks,
so each replica's queue is one FIFO with no limit, close to what live amounts to.
A replica that goes idle with requests still waiting for it (the woken ones went
elsewhere) reports its free slots (``on_free_slots``), as Serve's probe of its queue
length does live, so none is stranded. A request without a key (``no_key``) falls
through the ranked replicas as Serve's tiers do, and only when all are full is it
held by Serve (``Placement.candidates`` None, the loop's hold queue).

Outcome labels: the ``router.Outcome`` of the decision finally offered, once per
request; ``fallthrough`` in addition for a fall-through; ``spill_wait_<result>`` for
how each spill wait ended (``router.SpillWaitResult``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable

from bench.sim.block_cache import Allocation
from bench.sim.prompts import SimRequest
from bench.sim.routers.base import Placement
from router import (
    Admission,
    CacheAwarePolicy,
    Decision,
    Hold,
    InFlightCounts,
    Loads,
    Outcome,
    PolicyConfig,
    RouteRequest,
    Step,
    Ticket,
)
from router.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

# A request with full blocks and no session needs nothing else from RouteRequest.
_PLAIN = RouteRequest()


class CacheRouteRouter:
    name = "cacheroute"

    def __init__(self, replicas: Iterable[str], config: PolicyConfig, *,
                 clock: Callable[[], float], kv_events: bool = True,
                 spill_wait_s: float = 0.0) -> None:
        self.policy = CacheAwarePolicy(config, replicas=replicas, clock=clock)
        self.admission = Admission(self.policy, spill_wait_s=spill_wait_s,
                                   slot_wait_s=math.inf, clock=clock)
        self._kv_events = kv_events
        self._block_size = config.block_size
        self.outcomes: Counter[str] = Counter()
        # (outcome, replica) -> its Placement: the answers are immutable and few (7 x N),
        # and building one costs more than a tenth of a decision.
        self._placements: dict[tuple[Outcome, str], Placement] = {}
        # Requests the admission holds: by ticket, and each request's ticket.
        self._held: dict[Ticket, SimRequest] = {}
        self._tickets: dict[int, Ticket] = {}
        # The loads of the loop's counts (built once: the counts change in place).
        self._loads: Loads | None = None

    @property
    def replicas(self) -> frozenset[str]:
        return self.policy.replicas

    @property
    def decisions(self) -> int:
        """Decisions made: first ones, and again after a wait or a retry."""
        return self.admission.decisions

    @staticmethod
    def _route_request(request: SimRequest) -> RouteRequest:
        return (_PLAIN if request.session is None and request.block_hashes
                else RouteRequest(token_ids=request.short_tokens, session_id=request.session))

    def _loads_of(self, in_flight: InFlightCounts, max_ongoing: int | None) -> Loads:
        loads = self._loads
        if loads is None or loads.in_flight is not in_flight or loads.max_in_flight != max_ongoing:
            loads = self._loads = Loads(in_flight=in_flight, max_in_flight=max_ongoing)
        return loads

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        step = self.admission.admit(self._route_request(request),
                                    self._loads_of(in_flight, max_ongoing),
                                    hashes=request.block_hashes)
        return self._placement(request, step, in_flight, max_ongoing)

    def resume(self, request: SimRequest, in_flight: InFlightCounts,
               max_ongoing: int | None) -> Placement:
        """A held request, woken by ``on_completed`` or at its ``Hold.until_s``."""
        ticket = self._tickets.pop(request.index)
        del self._held[ticket]
        step = self.admission.resume(ticket, self._loads_of(in_flight, max_ongoing))
        return self._placement(request, step, in_flight, max_ongoing)

    def on_completed(self, request: SimRequest, replica: str) -> list[SimRequest]:
        """``request``, sent by this router, finished on ``replica``: the held request
        that wakes (one at most), for the loop to ``resume``."""
        ticket = self.admission.on_completed(replica)
        return [self._held[ticket]] if ticket is not None else []

    def on_free_slots(self, replica: str, free: int) -> list[SimRequest]:
        """``replica`` has ``free`` slots (it went idle): the slot waiters that wake."""
        return [self._held[t] for t in self.admission.on_free_slots(replica, free)]

    def _placement(self, request: SimRequest, step: Step, in_flight: InFlightCounts,
                   max_ongoing: int | None) -> Placement:
        if step.spill_wait is not None:
            self.outcomes[f"spill_wait_{step.spill_wait.value}"] += 1
        if isinstance(step, Hold):
            self._held[step.ticket] = request
            self._tickets[request.index] = step.ticket
            return Placement(None, step.kind.value, hold=step)
        return self._place(step.decision, in_flight, max_ongoing)

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
        # Held by Serve: a whole ranking (a request held for its one replica waits in
        # the router instead, router/admission.py).
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
