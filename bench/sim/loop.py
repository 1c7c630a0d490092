"""The discrete-event loop: arrivals, routing decisions, engine prefill and decode.

Events, in time order (ties in the order they were scheduled, so a run is a
pure function of its inputs and seed):

* arrival: the router decides (the timed call, ``routers``); the request goes to
  the chosen replica's engine, or into the hold queue when every candidate is at
  ``max_ongoing_requests``; an idle engine starts a step;
* step end (``engine.py``): first tokens (TTFT recorded) and finished requests
  (end-to-end latency recorded, in-flight count decremented); each freed slot
  goes to the first held request that may take it, or else wakes the oldest
  request parked by the spill wait for that replica, which is decided again;
  the engine starts its next step if it has work;
* spill-wait timeout: a request still parked is decided again (it spills).

Arrivals are pulled lazily from the request iterator and merged with a heap of
step ends (at most one per replica), so memory holds only requests in flight
(plus per-request result numbers in flat arrays). Cost per request: one
decision, the engines' O(blocks) cache work and O(log R) heap work per step on
R replicas, and O(1) amortised for a held request (``hold_queue.py``).

Only the routing decision is timed (``decision_s``); it excludes hashing (done
when the request is built, ``prompts.py``) and everything the engines do.
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
from router import PolicyConfig
from router.load import InFlightCounts


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
    held: int = 0
    # Decisions made again after a spill wait (also in ``decisions``).
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
        # (spill-wait deadline, sequence number, -ticket) for parked requests.
        self.heap: list[tuple[float, int, int]] = []
        self.seq = 0
        self.held = HoldQueue()
        # Requests parked by the spill wait, for a completion on one of their owners.
        self.parked = HoldQueue()
        self.spill_wait_s = float(getattr(router, "spill_wait_s", 0.0))
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
                if placement.wait_for is not None:
                    self._park(request, placement.wait_for, now)
                else:
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
                request = self.parked.take(-index)
                if request is not None:  # else a completion woke it before its timeout
                    self._decide_again(request, at, woken=False)
        if progress is not None:
            progress(count)
        result.requests = count
        result.decisions = count + result.decided_again
        result.decision_s = self.decision_s
        result.wall_s = perf() - started
        result.duration_s = clock.now - (first_arrival or 0.0)
        result.oracle_cached_tokens = oracle_cache.cached_tokens
        result.outcomes = dict(getattr(self.router, "outcomes", Counter()))
        return result

    def _park(self, request: SimRequest, owners: frozenset[str], now: float) -> None:
        ticket = self.parked.add(request, owners)
        self.seq += 1
        heapq.heappush(self.heap, (now + self.spill_wait_s, self.seq, -ticket))

    def _decide_again(self, request: SimRequest, now: float, *, woken: bool) -> None:
        perf = time.perf_counter
        tick = perf()
        placement = self.router.decide_again(  # type: ignore[attr-defined]
            request, self.in_flight, self.max_ongoing, woken=woken)
        self.decision_s += perf() - tick
        self.result.decided_again += 1
        self._place(request, placement, now)

    def _place(self, request: SimRequest, placement: Placement, now: float) -> None:
        """Send the request where the router placed it, or hold it for its candidates."""
        if placement.replica is not None:
            self._dispatch(request, placement.replica, now)
        else:
            self.held.add(request, placement.candidates)
            self.result.held += 1

    def _kick(self, engine: SimEngine, now: float) -> None:
        end = engine.kick(now)
        if end is not None:
            self.seq += 1
            heapq.heappush(self.heap, (end, self.seq, engine.index))

    def _dispatch(self, request: SimRequest, replica: str, now: float) -> None:
        index = self.index_of[replica]
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
        if done:
            # One wake per completion, as live: a held request that may take the
            # freed slot first, else the oldest request parked before a spill.
            wakes = len(done) - self._release_held(replica, now)
            parked = self.parked
            while wakes > 0 and parked:
                request = parked.pop_for(replica)
                if request is None:
                    break
                wakes -= 1
                self._decide_again(request, now, woken=True)

    def _release_held(self, replica: str, now: float) -> int:
        held = self.held
        max_ongoing = self.max_ongoing
        released = 0
        while held and (max_ongoing is None or self.in_flight[replica] < max_ongoing):
            request = held.pop_for(replica)
            if request is None:
                break
            self._dispatch(request, replica, now)
            released += 1
        return released
