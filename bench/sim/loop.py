"""The discrete-event loop: arrivals, routing decisions, engine prefill and decode.

Events, in time order (ties in the order they were scheduled, so a run is a
pure function of its inputs and seed):

* arrival: the router decides (the timed call, ``routers``); the request goes to
  the chosen replica's engine, is held by the router itself (``cacheroute``: the
  waiting protocol of router/admission.py, a slot wait or a spill wait), or goes
  into the hold queue, Serve's retry, when every candidate is at
  ``max_ongoing_requests``; an idle engine starts a step;
* step end (``engine.py``): first tokens (TTFT recorded) and finished requests
  (end-to-end latency recorded, in-flight count decremented); the engine starts
  its next step if it has work; each finished request is reported to the router
  that sent it, whose held requests it wakes (one per completion) are decided
  again (timed); then each freed slot goes to the first request in the hold queue
  that may take it;
* a held request's deadline: if it is still held, it is decided again (a spill
  wait that ran out spills; a slot wait that ran out is offered its replica).

Arrivals are pulled lazily from the request iterator and merged with a heap of
step ends (at most one per replica), so memory holds only requests in flight
(plus per-request result numbers in flat arrays). Cost per request: one
decision, the engines' O(blocks) cache work and O(log R) heap work per step on
R replicas, and O(1) amortised for a held request (``hold_queue.py``,
router/admission.py).

Only the routing decisions are timed (``decision_s``, first ones and again after a
wait); they exclude hashing (done when the request is built, ``prompts.py``) and
everything the engines do.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bench.oracle import OracleCache
from bench.sim.block_cache import Allocation
from bench.sim.engine import EngineParams, SimEngine
from bench.sim.hold_queue import HoldQueue
from bench.sim.prompts import SimRequest
from bench.sim.routers import Placement, SimRouter, make_router
from router import Hold, InFlightCounts, PolicyConfig, WaitKind


@dataclass(frozen=True, kw_only=True)
class FleetParams:
    replicas: int
    engine: EngineParams = field(default_factory=EngineParams)
    # Serve's per-replica cap; None: no cap (everything queues in the engines).
    # The live deployment's value: max(8, 2 x max_num_seqs) = 16 (serving/app.py).
    max_ongoing_requests: int | None = 16

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")


@dataclass(kw_only=True)
class RunResult:
    """One policy's run: raw per-request numbers and counters (``summary.py`` reduces them)."""

    policy: str
    replicas: int
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    oracle_cached_tokens: int = 0
    ttft_s: array = field(default_factory=lambda: array("d"))
    e2e_s: array = field(default_factory=lambda: array("d"))
    requests_by_replica: list[int] = field(default_factory=list)
    decisions: int = 0
    decision_s: float = 0.0
    wall_s: float = 0.0
    # Simulated time from the first arrival to the last finish.
    duration_s: float = 0.0
    # Requests that waited for a slot (held by the router or by Serve), once each.
    held: int = 0
    # Decisions made again after a wait, or a retry after one (also in ``decisions``).
    decided_again: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


RouterFactory = Callable[[list[str], Callable[[], float]], SimRouter]


def replica_ids(count: int) -> list[str]:
    """Fixed ids, so ring positions (and decisions) repeat from run to run."""
    return [f"replica-{index:04d}" for index in range(count)]


class _Clock:
    """Simulated time, injected into the policy (ownership TTLs)."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(policy: str, requests: Iterable[SimRequest], fleet: FleetParams, *,
             policy_config: PolicyConfig | None = None, seed: int = 0, kv_events: bool = True,
             progress: Callable[[int], None] | None = None,
             router_factory: RouterFactory | None = None,
             ray_imbalanced_threshold: float = math.inf,
             spill_wait_s: float = 0.0, ingresses: int = 1) -> RunResult:
    """Run ``requests`` (in arrival order) through ``policy`` on a fresh fleet,
    decided by ``ingresses`` router instances (``routers/ingresses.py``).

    ``router_factory(replica_ids, clock)`` replaces the named policy's router
    (tests wrap a router to watch its decisions).
    """
    config = policy_config or PolicyConfig(block_size=fleet.engine.block_size)
    if config.block_size != fleet.engine.block_size:
        raise ValueError(f"policy block_size {config.block_size} != engine block_size "
                         f"{fleet.engine.block_size}: no hash would match")
    ids = replica_ids(fleet.replicas)
    clock = _Clock()
    router = (router_factory(ids, clock) if router_factory is not None
              else make_router(policy, ids, policy_config=config, clock=clock, seed=seed,
                               kv_events=kv_events,
                               ray_imbalanced_threshold=ray_imbalanced_threshold,
                               spill_wait_s=spill_wait_s, ingresses=ingresses))
    gc_was_enabled = gc.isenabled()
    gc.disable()  # nothing per request forms a reference cycle; collections only cost time
    try:
        return _Run(router, ids, fleet, clock).run(requests, progress)
    finally:
        if gc_was_enabled:
            gc.enable()


class _Run:
    def __init__(self, router: SimRouter, ids: list[str], fleet: FleetParams,
                 clock: _Clock) -> None:
        self.router = router
        self.ids = ids
        self.index_of = {replica: index for index, replica in enumerate(ids)}
        self.clock = clock
        self.max_ongoing = fleet.max_ongoing_requests
        self.engines = [SimEngine(index, fleet.engine, on_kv=self._on_kv)
                        for index in range(len(ids))]
        # Built over the policy's own replica set, so that it reads the total in O(1).
        replicas = getattr(router, "replicas", None)
        self.in_flight = InFlightCounts(replicas if replicas is not None else frozenset(ids))
        # (step end, sequence number, engine index): at most one per engine; and
        # (a hold's deadline, sequence number, -sequence number) for held requests.
        self.heap: list[tuple[float, int, int]] = []
        self.seq = 0
        # Serve's retries: requests whose candidates were all full.
        self.held = HoldQueue()
        # Requests the router holds, by index, with their current hold; and the hold
        # each deadline on the heap belongs to (stale once the request was woken).
        self.parked: dict[int, Hold] = {}
        self.deadlines: dict[int, tuple[SimRequest, Hold]] = {}
        # Requests held once already (``RunResult.held`` counts each once).
        self.waited: set[int] = set()
        # A router that holds requests itself (router/admission.py): its wake hooks.
        self.wake = getattr(router, "on_completed", None)
        self.free_slots = getattr(router, "on_free_slots", None)
        self.decision_s = 0.0
        self.result = RunResult(policy=router.name, replicas=len(ids),
                                requests_by_replica=[0] * len(ids))

    def _on_kv(self, index: int, allocation: Allocation) -> None:
        self.router.on_kv_events(self.ids[index], allocation, self.clock.now)

    def run(self, requests: Iterable[SimRequest],
            progress: Callable[[int], None] | None) -> RunResult:
        result = self.result
        oracle_cache = OracleCache(self.engines[0].block_size)
        heap = self.heap
        route = self.router.route
        in_flight = self.in_flight
        max_ongoing = self.max_ongoing
        clock = self.clock
        perf = time.perf_counter
        count = 0
        first_arrival = None
        started = perf()
        arrivals = iter(requests)
        upcoming = next(arrivals, None)
        while upcoming is not None or heap:
            if upcoming is not None and (not heap or upcoming.arrival_s <= heap[0][0]):
                request = upcoming
                clock.now = now = request.arrival_s
                if first_arrival is None:
                    first_arrival = now
                oracle_cache.observe(request.prompt_tokens, request.block_hashes)
                tick = perf()
                placement = route(request, in_flight, max_ongoing)
                self.decision_s += perf() - tick
                count += 1
                self._place(request, placement, now)
                if progress is not None and not count & 1023:
                    progress(count)
                upcoming = next(arrivals, None)
                continue
            at, _, index = heapq.heappop(heap)
            clock.now = at
            if index >= 0:
                self._step_end(index, at)
            else:
                request, hold = self.deadlines.pop(-index)
                if self.parked.get(request.index) is hold:  # else woken before it
                    del self.parked[request.index]
                    self._resume(request, at)
        if progress is not None:
            progress(count)
        # Nothing is left waiting: every wait ends at a wake or a deadline.
        assert not self.parked and not self.held, "requests were left waiting"
        result.requests = count
        result.decisions = getattr(self.router, "decisions", count)
        result.decided_again = result.decisions - count
        result.decision_s = self.decision_s
        result.wall_s = perf() - started
        result.duration_s = clock.now - (first_arrival or 0.0)
        result.oracle_cached_tokens = oracle_cache.cached_tokens
        result.outcomes = dict(getattr(self.router, "outcomes", Counter()))
        return result

    def _resume(self, request: SimRequest, now: float) -> None:
        """A request the router held: woken, or at its deadline; decided again."""
        perf = time.perf_counter
        tick = perf()
        placement = self.router.resume(  # type: ignore[attr-defined]
            request, self.in_flight, self.max_ongoing)
        self.decision_s += perf() - tick
        self._place(request, placement, now)

    def _place(self, request: SimRequest, placement: Placement, now: float) -> None:
        """Send the request where the router placed it, or hold it: in the router
        (until a wake or its deadline) or, for Serve's retry, for its candidates."""
        if placement.replica is not None:
            self._dispatch(request, placement.replica, now)
            return
        hold = placement.hold
        if hold is None:
            self.held.add(request, placement.candidates)
        else:
            self.parked[request.index] = hold
            if hold.until_s != math.inf:
                self.seq += 1
                self.deadlines[self.seq] = (request, hold)
                heapq.heappush(self.heap, (hold.until_s, self.seq, -self.seq))
            if hold.kind is not WaitKind.SLOT:
                return  # a spill wait is no wait for a slot
        if request.index not in self.waited:
            self.waited.add(request.index)
            self.result.held += 1

    def _kick(self, engine: SimEngine, now: float) -> None:
        end = engine.kick(now)
        if end is not None:
            self.seq += 1
            heapq.heappush(self.heap, (end, self.seq, engine.index))

    def _dispatch(self, request: SimRequest, replica: str, now: float) -> None:
        index = self.index_of[replica]
        self.waited.discard(request.index)
        self.in_flight.add(replica, 1)
        self.result.requests_by_replica[index] += 1
        engine = self.engines[index]
        engine.submit(request)
        self.router.on_placed(request, replica, now)
        self._kick(engine, now)

    def _step_end(self, index: int, now: float) -> None:
        engine = self.engines[index]
        first, done = engine.step_end()
        result = self.result
        for seq in first:
            request = seq.request
            result.ttft_s.append(now - request.arrival_s)
            result.prompt_tokens += request.prompt_tokens
            result.cached_tokens += seq.cached_tokens
        replica = self.ids[index]
        for seq in done:
            result.e2e_s.append(now - seq.request.arrival_s)
            self.in_flight.add(replica, -1)
        # The engine schedules its next step before held requests arrive, as a
        # request sent now reaches vLLM's queue during the step that just began.
        self._kick(engine, now)
        if not done:
            return
        if self.wake is not None:
            # Every completion reaches the router that sent it, as Serve's hook does
            # live; what it wakes decides again once all are woken (live, the woken
            # run after the hooks). Before Serve's retries: those back off first.
            self._resume_all([w for seq in done for w in self.wake(seq.request, replica)],
                             now)
        self._release_held(replica, now)
        if (self.free_slots is not None and self.parked and self.max_ongoing is not None
                and not self.in_flight[replica]):
            # Idle with requests still waiting for it (those woken went elsewhere): no
            # completion there will wake them, its free slots do (bench/sim/routers/
            # cacheroute.py).
            self._resume_all(self.free_slots(replica, self.max_ongoing), now)

    def _resume_all(self, woken: list[SimRequest], now: float) -> None:
        for request in woken:
            del self.parked[request.index]
            self._resume(request, now)

    def _release_held(self, replica: str, now: float) -> None:
        held = self.held
        max_ongoing = self.max_ongoing
        while held and (max_ongoing is None or self.in_flight[replica] < max_ongoing):
            request = held.pop_for(replica)
            if request is None:
                break
            self._dispatch(request, replica, now)
