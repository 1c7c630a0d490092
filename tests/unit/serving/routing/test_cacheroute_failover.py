"""The router's side of failover: retries routed around failed replicas, hung
replicas (by their routing stats) out of the ring and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve._private.test_utils import FakeRunningReplica

from router import Outcome
from serving.routing.registry import local_routers
from serving.contract import ENGINE_PROGRESS_KEY
from tests.unit.serving.routing.test_cacheroute import (  # noqa: F401  (tiny_model is a fixture)
    SYSTEM,
    choose,
    counter,
    make_pending,
    make_router,
    on_loop,
    tiny_model,
)


class StatsReplica(FakeRunningReplica):
    """A fake replica whose routing stats the test sets."""

    def __init__(self, unique_id: str) -> None:
        super().__init__(unique_id)
        self.stats: dict[str, Any] = {}

    @property
    def routing_stats(self) -> dict[str, Any]:
        return self.stats


def make_stats_replicas(n: int) -> list[StatsReplica]:
    return [StatsReplica(f"replica-{i}") for i in range(n)]


def test_a_retry_goes_to_the_next_replica_that_has_not_failed_it(tiny_model: Path) -> None:
    router = make_router(tiny_model, make_stats_replicas(3))
    pending = make_pending(SYSTEM, "retried question")
    key = pending.metadata.internal_request_id
    log = local_routers().attempts
    first = choose(router, pending)[0][0]
    assert log.replica_of(key) == first
    log.avoid(key, first)
    tiers = choose(router, pending)
    assert router.last_decision.outcome is Outcome.FAILOVER
    assert first not in [t[0] for t in tiers] and len(tiers) == 2
    assert log.replica_of(key) == tiers[0][0]
    for tier in tiers:
        log.avoid(key, tier[0])
    # Every replica failed it once: route as usual rather than nowhere.
    assert choose(router, pending)
    log.forget(key)


def test_a_replica_reporting_no_progress_leaves_the_ring_until_it_progresses(
        tiny_model: Path) -> None:
    replicas = make_stats_replicas(3)
    router = make_router(tiny_model, replicas)
    timeout = router._hangs.progress_timeout_s
    ejected_before = counter("cacheroute_failover_ejections_total", change="ejected")
    home = choose(router, make_pending(SYSTEM, "q"))[0][0]
    hung = next(r for r in replicas if r.replica_id.unique_id == home)
    hung.stats = {ENGINE_PROGRESS_KEY: {"stalled_s": timeout - 0.1, "active": 2}}
    on_loop(router.update_replicas, replicas)
    assert home in router.policy.replicas  # busy or briefly stalled: stays
    hung.stats = {ENGINE_PROGRESS_KEY: {"stalled_s": timeout + 1, "active": 2}}
    on_loop(router.update_replicas, replicas)
    assert home not in router.policy.replicas and local_routers().attempts.is_ejected(home)
    assert home not in [t[0] for t in choose(router, make_pending(SYSTEM, "q"))]
    assert counter("cacheroute_failover_ejections_total", change="ejected") == ejected_before + 1
    assert counter("cacheroute_router_ejected_replicas") == 1
    hung.stats = {ENGINE_PROGRESS_KEY: {"stalled_s": 0.0, "active": 0}}
    on_loop(router.update_replicas, replicas)
    assert home in router.policy.replicas and not local_routers().attempts.is_ejected(home)
    # Back with its arcs and its cache: the prefix goes home again.
    assert choose(router, make_pending(SYSTEM, "q"))[0][0] == home
    assert counter("cacheroute_router_ejected_replicas") == 0


def test_a_retry_whose_choice_already_moved_keeps_it(tiny_model: Path) -> None:
    replicas = make_stats_replicas(3)
    router = make_router(tiny_model, replicas)
    pending = make_pending(SYSTEM, "moved question")
    key = pending.metadata.internal_request_id
    log = local_routers().attempts
    first = choose(router, pending)[0][0]
    log.avoid(key, first)
    on_loop(router.on_replica_actor_died,
            next(r for r in replicas if r.replica_id.unique_id == first).replica_id)
    choose(router, pending)
    assert router.last_decision.outcome is not Outcome.FAILOVER
    assert router.last_decision.replica_id != first
    log.forget(key)


def test_ring_seats_follow_the_ranks_replicas_report(tiny_model: Path) -> None:
    """A replica replacing a dead one reports its predecessor's rank (Serve reuses the
    lowest free rank) and so takes back its predecessor's ring arcs."""
    from serving.contract import RANK_STATS_KEY

    replicas = make_stats_replicas(3)
    for rank, r in enumerate(replicas):
        r.stats[RANK_STATS_KEY] = rank
    router = make_router(tiny_model, replicas)
    prompts = [f"Tenant {i} " * 40 for i in range(24)]
    homes = [choose(router, make_pending(p, f"q{i}"))[0][0] for i, p in enumerate(prompts)]
    victim = replicas[1]
    on_loop(router.on_replica_actor_died, victim.replica_id)
    replacement = StatsReplica("replica-new")
    replacement.stats[RANK_STATS_KEY] = 1
    fresh = make_router(tiny_model, [replicas[0], replicas[2], replacement])
    again = [choose(fresh, make_pending(p, f"q{i}"))[0][0] for i, p in enumerate(prompts)]
    expected = ["replica-new" if h == "replica-1" else h for h in homes]
    assert again == expected
