"""The event loop: exact TTFTs, the router's waits and Serve's hold queue, the oracle
bound, bounded loads, seeds."""

from __future__ import annotations

import math

import pytest

from bench.sim.loop import FleetParams, simulate
from bench.sim.routers import POLICIES
from bench.sim.prompts import SimRequest
from bench.sim.routers.base import NoHooks, Placement
from bench.sim.routers.cacheroute import CacheRouteRouter
from bench.sim.summary import summarise
from router import Hold, InFlightCounts, PolicyConfig, Ticket, WaitKind
from tests.unit.bench.sim.sim_factories import make_engine_params, make_request, make_workload


def bound_alone(fleet: FleetParams) -> PolicyConfig:
    """The (1 + eps) x mean cap with no floor: these runs spill at 2 in flight."""
    return PolicyConfig(block_size=fleet.engine.block_size, load_floor=0)


def make_fleet(replicas: int = 1, *, max_ongoing_requests: int | None = None,
               **engine: object) -> FleetParams:
    return FleetParams(replicas=replicas, engine=make_engine_params(**engine),
                       max_ongoing_requests=max_ongoing_requests)


def test_ttft_is_queue_wait_plus_prefill() -> None:
    requests = [make_request(0, blocks=(1, 2), arrival_s=0.0),
                make_request(1, blocks=(1, 2), arrival_s=1.0)]
    run = simulate("pow2", requests, make_fleet(max_num_seqs=1))
    # First: 1 s overhead + 9 tokens. Second: arrives at 1, starts at 10, 1 + 1 s.
    assert list(run.ttft_s) == [10.0, 11.0]
    assert (run.prompt_tokens, run.cached_tokens) == (18, 8)
    assert run.duration_s == 12.0


def test_a_replica_at_max_ongoing_requests_holds_requests_in_the_router() -> None:
    requests = [make_request(i, blocks=(i + 1,), arrival_s=0.0) for i in range(3)]
    run = simulate("cacheroute", requests, make_fleet(max_ongoing_requests=1))
    assert run.held == 2
    # 5 tokens each, no hits: 6 s apiece, one after another.
    assert list(run.ttft_s) == [6.0, 12.0, 18.0]


def test_a_held_request_is_decided_again_when_a_completion_wakes_it() -> None:
    # The first request finishes at 6 s; the second, held for the one replica in the
    # router's queue (router/admission.py), is woken then and decided again: its
    # prefix is known there by now, an owner hit.
    requests = [make_request(0, blocks=(1,)), make_request(1, blocks=(2,))]
    run = simulate("cacheroute", requests, make_fleet(max_ongoing_requests=1))
    assert list(run.ttft_s) == [6.0, 12.0]
    assert (run.decisions, run.decided_again, run.held) == (3, 1, 1)
    assert run.outcomes == {"ring_home": 1, "owner_hit": 1}


class _WakesNobody(NoHooks):
    """Sends the first request to the one replica and holds the second for it; no
    completion wakes the held one (as when the woken went elsewhere)."""

    name = "wakes-nobody"
    decisions = 2

    def __init__(self) -> None:
        self.freed: list[tuple[str, int]] = []
        self.waiting: SimRequest | None = None

    def route(self, request, in_flight, max_ongoing):  # type: ignore[no-untyped-def]
        if request.index == 0:
            return Placement("replica-0000", "first")
        self.waiting = request
        return Placement(None, "slot", hold=Hold(Ticket(1), WaitKind.SLOT,
                                                 frozenset({"replica-0000"}), math.inf))

    def resume(self, request, in_flight, max_ongoing):  # type: ignore[no-untyped-def]
        return Placement("replica-0000", "resumed")

    def on_completed(self, request, replica):  # type: ignore[no-untyped-def]
        return []

    def on_free_slots(self, replica, free):  # type: ignore[no-untyped-def]
        self.freed.append((replica, free))
        return [self.waiting]


def test_a_replica_that_goes_idle_wakes_the_requests_still_waiting_for_it() -> None:
    router = _WakesNobody()
    requests = [make_request(0, blocks=(1,)), make_request(1, blocks=(2,))]
    run = simulate("cacheroute", requests, make_fleet(max_ongoing_requests=1),
                   router_factory=lambda ids, clock: router)
    assert router.freed == [("replica-0000", 1)]
    assert list(run.ttft_s) == [6.0, 12.0] and run.held == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_one_replica_with_unbounded_cache_reaches_the_oracle(policy: str) -> None:
    requests = make_workload(with_text=True)
    run = simulate(policy, requests, make_fleet(block_size=16, kv_capacity_blocks=10**6))
    summary = summarise(run)
    assert summary.hit_rate == summary.oracle_hit_rate
    assert 0.5 < summary.hit_rate < 1.0


def test_a_small_cache_evicts_and_falls_below_the_oracle() -> None:
    requests = make_workload(tenants=8, requests=80)
    summary = summarise(simulate("pow2", requests,
                                 make_fleet(block_size=16, kv_capacity_blocks=12)))
    assert summary.hit_rate < summary.oracle_hit_rate


@pytest.mark.parametrize("policy", POLICIES)
def test_a_seed_fixes_the_run(policy: str) -> None:
    requests = make_workload(tenants=6, requests=60, rate_rps=20.0, with_text=True)
    fleet = make_fleet(4, block_size=16, prefill_s_per_token=0.01, step_overhead_s=0.05)
    first, again = (simulate(policy, requests, fleet, seed=7) for _ in range(2))
    assert list(first.ttft_s) == list(again.ttft_s)
    assert first.requests_by_replica == again.requests_by_replica
    assert first.outcomes == again.outcomes


def test_pow2_draws_depend_on_the_seed() -> None:
    requests = make_workload(tenants=6, requests=60)
    fleet = make_fleet(4, block_size=16)
    runs = {tuple(simulate("pow2", requests, fleet, seed=seed).requests_by_replica)
            for seed in range(4)}
    assert len(runs) > 1


class _WatchedRouter(CacheRouteRouter):
    """The real router, recording each decision's load bound."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.checks: list[tuple[int, int]] = []

    def route(self, request, in_flight: InFlightCounts, max_ongoing):  # type: ignore[no-untyped-def]
        total = sum(in_flight.get(r, 0) for r in self.replicas)
        placement: Placement = super().route(request, in_flight, max_ongoing)
        bound = max(self.policy.config.load_floor,
                    math.ceil(1.25 * (total + 1) / len(self.replicas)))
        assert placement.replica is not None
        self.checks.append((in_flight.get(placement.replica, 0), bound))
        return placement


@pytest.mark.parametrize("floor", [0, PolicyConfig().load_floor])
def test_cacheroute_decisions_keep_the_bounded_load(floor: int) -> None:
    # Zipf-skewed tenants at a rate that queues: the hot tenant's home must spill,
    # with the bound alone and with the default floor under it.
    requests = make_workload(tenants=6, requests=200, rate_rps=40.0, zipf_s=1.5)
    watched: list[_WatchedRouter] = []

    def factory(ids, clock):  # type: ignore[no-untyped-def]
        watched.append(_WatchedRouter(ids, PolicyConfig(block_size=16, load_floor=floor),
                                      clock=clock))
        return watched[0]

    fleet = make_fleet(6, block_size=16, prefill_s_per_token=0.002, step_overhead_s=0.02)
    run = simulate("cacheroute", requests, fleet, router_factory=factory)
    assert len(watched[0].checks) == 200
    assert all(load < bound for load, bound in watched[0].checks)
    assert run.outcomes.get("spill", 0) > 0 and run.outcomes.get("owner_hit", 0) > 0


def test_mismatched_block_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="block_size"):
        simulate("pow2", [], make_fleet(), policy_config=PolicyConfig(block_size=16))


def test_a_spill_whose_owner_already_has_a_request_parked_goes_at_once() -> None:
    # As above, and a fourth request at 0.2 s: the owner's first completion (10 s) is
    # the third's, so the fourth spills at once instead of parking behind it.
    requests = [make_request(0), make_request(1), make_request(2, arrival_s=0.1),
                make_request(3, arrival_s=0.2)]
    fleet = make_fleet(2)
    run = simulate("cacheroute", requests, fleet, spill_wait_s=30.0,
                   policy_config=bound_alone(fleet))
    assert {k: v for k, v in run.outcomes.items() if k.startswith("spill_wait")} == {
        "spill_wait_busy": 1, "spill_wait_owner_hit": 1}
    assert run.outcomes["spill"] == 1 and run.decisions == 5
    # The fourth prefilled at once on the idle replica, as the first did (10 s).
    assert sorted(run.ttft_s)[:2] == pytest.approx([10.0, 10.0])


@pytest.mark.parametrize(("wait_s", "by_replica", "waits"), [
    (0.0, [1, 2], {}),  # the bound spills the third request at once
    (5.0, [1, 2], {"spill_wait_timeout": 1}),  # the owner's first completion is at 10 s
    (30.0, [0, 3], {"spill_wait_owner_hit": 1}),  # ...which frees a slot under the bound
])
def test_the_spill_wait_parks_a_spill_until_an_owner_completes_or_time_runs_out(
        wait_s: float, by_replica: list[int], waits: dict[str, int]) -> None:
    # Two requests on the home (prefill of 9 tokens: the first finishes at 10 s), then
    # a third at 0.1 s: 2 of ceil(1.25 x 3 / 2) = 2 in flight there, a spill.
    requests = [make_request(0), make_request(1), make_request(2, arrival_s=0.1)]
    fleet = make_fleet(2)
    run = simulate("cacheroute", requests, fleet, spill_wait_s=wait_s,
                   policy_config=bound_alone(fleet))
    assert sorted(run.requests_by_replica) == by_replica
    assert {k: v for k, v in run.outcomes.items() if k.startswith("spill_wait")} == waits
    assert run.outcomes.get("spill", 0) == (0 if by_replica == [0, 3] else 1)
    assert run.decisions == 3 + len(waits)
    if waits == {"spill_wait_owner_hit": 1}:
        # Woken at 10 s, when the home's next step (the second request's) has begun:
        # it joins the step after, 12-14 s (its 8 cached tokens skipped).
        assert max(run.ttft_s) == pytest.approx(14.0 - 0.1)
