"""Several ingress instances in the simulator: one router each, KV events to all."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from bench.sim.block_cache import Allocation
from bench.sim.cli import main
from bench.sim.loop import FleetParams, simulate
from bench.sim.routers import POLICIES, make_router
from bench.sim.routers.base import Placement
from bench.sim.routers.cacheroute import CacheRouteRouter
from bench.sim.routers.ingresses import Ingresses
from bench.sim.routers.ray_prefix import RayPrefixRouter
from bench.sim.summary import summarise
from router import InFlightCounts, PolicyConfig
from tests.unit.bench.sim.sim_factories import (
    make_engine_params,
    make_hashes,
    make_request,
    make_workload,
)

REPLICAS = ("r0", "r1", "r2")


class _Scripted(random.Random):
    """Draws the ingress indices it is given, in order."""

    def __init__(self, picks: list[int]) -> None:
        super().__init__(0)
        self._picks = iter(picks)

    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return next(self._picks)


class _Recorder:
    """A router that records which calls reached it."""

    name = "recorder"

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.calls: list[tuple[str, int]] = []
        self.outcomes: Counter[str] = Counter({tag: 1})

    def route(self, request, in_flight, max_ongoing):  # type: ignore[no-untyped-def]
        self.calls.append(("route", request.index))
        return Placement("r0", self.tag)

    def resume(self, request, in_flight, max_ongoing):  # type: ignore[no-untyped-def]
        self.calls.append(("resume", request.index))
        return Placement("r0", self.tag)

    def on_completed(self, request, replica):  # type: ignore[no-untyped-def]
        self.calls.append(("on_completed", request.index))
        return [request]

    @property
    def decisions(self) -> int:
        return sum(1 for call, _ in self.calls if call in ("route", "resume"))

    def on_placed(self, request, replica, now_s):  # type: ignore[no-untyped-def]
        self.calls.append(("on_placed", request.index))

    def on_kv_events(self, replica, allocation, now_s):  # type: ignore[no-untyped-def]
        self.calls.append(("kv", -1))


def _stored(*blocks: int) -> Allocation:
    return Allocation(hashes=(), anonymous_blocks=0, hit_blocks=0,
                      stored=tuple(make_hashes(*blocks)), evicted=())


def test_follow_ups_go_to_the_deciding_instance_and_events_to_all() -> None:
    a, b = _Recorder("a"), _Recorder("b")
    ingresses = Ingresses([a, b], rng=_Scripted([0, 1]))
    in_flight = InFlightCounts(frozenset(REPLICAS))
    ingresses.route(make_request(0), in_flight, None)
    ingresses.route(make_request(1), in_flight, None)
    ingresses.resume(make_request(1), in_flight, None)
    ingresses.on_placed(make_request(1), "r0", 0.0)
    ingresses.on_placed(make_request(0), "r0", 0.0)
    ingresses.on_kv_events("r0", _stored(1), 0.0)
    # A completion wakes waiters of the instance that placed the request only.
    assert ingresses.on_completed(make_request(1), "r0") == [make_request(1)]
    assert a.calls == [("route", 0), ("on_placed", 0), ("kv", -1)]
    assert b.calls == [("route", 1), ("resume", 1), ("on_placed", 1), ("kv", -1),
                       ("on_completed", 1)]
    assert ingresses.outcomes == Counter({"a": 1, "b": 1})
    assert ingresses.decisions == 3
    with pytest.raises(KeyError):  # placed once only
        ingresses.on_placed(make_request(0), "r0", 0.0)
    with pytest.raises(KeyError):  # completed once only
        ingresses.on_completed(make_request(1), "r0")


def test_an_instance_learns_another_instances_placement_from_the_kv_events() -> None:
    config = PolicyConfig(block_size=4)
    routers = [CacheRouteRouter(list(REPLICAS), config, clock=lambda: 0.0) for _ in range(2)]
    ingresses = Ingresses(routers, rng=_Scripted([0, 1]))
    in_flight = InFlightCounts(routers[0].replicas)
    first = ingresses.route(make_request(0, blocks=(1, 2)), in_flight, None)
    assert first.outcome == "ring_home" and first.replica is not None
    ingresses.on_placed(make_request(0, blocks=(1, 2)), first.replica, 0.0)
    # The prefix now lives away from its home (as after a spill); only its engine says so.
    elsewhere = next(r for r in REPLICAS if r != first.replica)
    ingresses.on_kv_events(elsewhere, _stored(1, 2), 0.0)
    second = ingresses.route(make_request(1, blocks=(1, 2)), in_flight, None)
    # The second instance never routed this prefix: it knows an owner from the event
    # alone, and not the first instance's choice.
    assert (second.replica, second.outcome) == (elsewhere, "owner_hit")
    assert routers[1].outcomes["owner_hit"] == 1 and routers[1].outcomes["ring_home"] == 0


def test_ray_prefix_shares_one_tree_and_ray_prefix_local_keeps_one_per_ingress() -> None:
    config = PolicyConfig(block_size=4)
    shared = make_router("ray-prefix", list(REPLICAS), policy_config=config,
                         clock=lambda: 0.0, seed=0, ingresses=4)
    assert isinstance(shared, RayPrefixRouter)
    local = make_router("ray-prefix-local", list(REPLICAS), policy_config=config,
                        clock=lambda: 0.0, seed=0, ingresses=2)
    assert isinstance(local, Ingresses) and local.name == "ray-prefix-local"
    local._rng = _Scripted([0, 1])  # the first request at ingress 0, the next at 1
    in_flight = InFlightCounts(frozenset(REPLICAS))
    text = "tenant A's long system prompt"
    first = local.route(make_request(0, text=text + " q1"), in_flight, None)
    assert first.replica is not None
    local.on_placed(make_request(0, text=text + " q1"), first.replica, 0.0)
    # Ingress 1's own tree has never seen tenant A.
    assert local.route(make_request(1, text=text + " q2"), in_flight, None).outcome == \
        "smallest_tenant"


def test_one_ingress_is_the_plain_router_and_zero_is_refused() -> None:
    config = PolicyConfig(block_size=4)
    assert isinstance(make_router("cacheroute", list(REPLICAS), policy_config=config,
                                  clock=lambda: 0.0, seed=0), CacheRouteRouter)
    with pytest.raises(ValueError, match="ingresses"):
        make_router("pow2", list(REPLICAS), policy_config=config, clock=lambda: 0.0, seed=0,
                    ingresses=0)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_with_several_ingresses(policy: str) -> None:
    requests = make_workload(tenants=6, requests=60, rate_rps=20.0, with_text=True)
    fleet = FleetParams(replicas=3, engine=make_engine_params(block_size=16,
                                                              prefill_s_per_token=0.01,
                                                              step_overhead_s=0.05),
                        max_ongoing_requests=2)
    first, again = (simulate(policy, requests, fleet, seed=3, ingresses=3) for _ in range(2))
    assert len(first.ttft_s) == 60 and sum(first.requests_by_replica) == 60
    assert list(first.ttft_s) == list(again.ttft_s)  # the ingress draws are seeded too
    summary = summarise(first)
    assert 0.0 < summary.hit_rate <= summary.oracle_hit_rate


def test_the_cli_takes_ingresses_and_refuses_zero(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    small = ["--tenants", "3", "--requests", "30", "--rate", "4", "--system-prompt-words", "40",
             "--block-size", "16", "--no-progress", "--replicas", "3"]
    out = tmp_path / "sim.json"
    assert main([*small, "--ingresses", "2", "--policies", "cacheroute,ray-prefix-local",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["fleet"]["ingresses"] == 2
    assert [r["policy"] for r in report["results"]] == ["cacheroute", "ray-prefix-local"]
    capsys.readouterr()
    assert main([*small, "--ingresses", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cacheroute sim:") and "ingresses" in err and err.count("\n") == 1
