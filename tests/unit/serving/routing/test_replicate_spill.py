"""Replication ahead of a spill: the router queues a prefix for the replica its next
request would spill to, once at a time, and the ingress's ``Prewarmer`` sends it; the
spill that follows is then an owner hit there."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from router import Outcome
from serving.routing.cacheroute import CacheRouteRequestRouter
from tests.unit.serving.routing import test_cacheroute as test_ray_router
from tests.unit.serving.routing.test_prewarm import (
    BLOCK,
    FakeDeployment,
    completion,
    make_prewarmer,
    prompt,
    sample,
)
from tests.unit.serving.routing.test_cacheroute import LOOP, choose, make_router, on_loop
from tests.unit.serving.routing.test_cacheroute_failover import StatsReplica

tiny_model = test_ray_router.tiny_model


def two_replica_router(model: Path, *, replicate: bool = True) -> CacheRouteRequestRouter:
    # The spill wait off: these tests check where the spill itself goes.
    return make_router(model, [StatsReplica("replica-0"), StatsReplica("replica-1")],
                       replicate_before_spill=replicate, spill_wait_s=0)


def busy(router: CacheRouteRequestRouter, replica_id: str, requests: int = 1) -> None:
    """``requests`` more in flight on the replica, as Serve counts them."""
    replica = next(r for r in router.curr_replicas.values()
                   if r.replica_id.unique_id == replica_id)
    for _ in range(requests):
        on_loop(router.on_send_request, replica.replica_id)


def fill_the_owner(router: CacheRouteRequestRouter) -> tuple[str, str]:
    """Head 1's home takes a request, then another while one is in flight: counting
    it, the home holds 2 of 2 in flight, the capacity ceil(1.25 x 3 / 2) = 2."""
    home = choose(router, completion(prompt(1, 0)))[0][0]
    other = "replica-1" if home == "replica-0" else "replica-0"
    busy(router, home)
    assert choose(router, completion(prompt(1, 1))) == [[home]]
    assert router.last_decision.outcome is Outcome.OWNER_HIT
    return home, other


def test_filling_the_last_owner_queues_its_prefix_for_the_spill_replica_once(
        tiny_model: Path) -> None:
    router = two_replica_router(tiny_model)
    home, other = fill_the_owner(router)
    (job,) = router.take_prewarm_jobs()
    assert (job.replica_id, job.reason) == (other, "spill")
    (prefix,) = job.prefixes
    # The blocks the request shared with its owner: head 1's three blocks.
    assert prefix.token_ids == tuple(prompt(1)[:3 * BLOCK]) and prefix.blocks == 3
    # While that prefill is out, the same prefix is not queued again.
    busy(router, home)
    choose(router, completion(prompt(1, 2)))
    assert router.take_prewarm_jobs() == []


def test_the_prewarmer_sends_it_there_and_the_spill_becomes_an_owner_hit(
        tiny_model: Path) -> None:
    router = two_replica_router(tiny_model)
    home, other = fill_the_owner(router)
    busy(router, home)  # the request just routed is now in flight there too
    deployment = FakeDeployment(router)
    registry = CollectorRegistry()
    assert LOOP.run_until_complete(
        make_prewarmer(router, deployment, registry).run_once()) == 1
    assert [replica for replica, _ in deployment.sent] == [other]
    assert sample(registry, "cacheroute_replications_total", result="sent") == 1
    assert sample(registry, "cacheroute_replications_total", result="succeeded") == 1
    assert sample(registry, "cacheroute_prewarm_sent_total") == 0  # not a scale-up
    # The home is full: the next request of head 1 leaves it for a replica that has it.
    assert choose(router, completion(prompt(1, 3))) == [[other]]
    assert (router.last_decision.outcome, router.last_decision.matched_blocks) == (
        Outcome.OWNER_HIT, 3)
    assert not router._prewarm.replicating  # the finished prefill was reported


def test_a_failed_replication_teaches_nothing_and_may_be_queued_again(
        tiny_model: Path) -> None:
    router = two_replica_router(tiny_model)
    home, other = fill_the_owner(router)
    busy(router, home)
    deployment = FakeDeployment(router)
    deployment.failing = {other}
    registry = CollectorRegistry()
    assert LOOP.run_until_complete(
        make_prewarmer(router, deployment, registry).run_once()) == 0
    assert sample(registry, "cacheroute_replications_total", result="failed") == 1
    choose(router, completion(prompt(1, 3)))
    assert router.last_decision.outcome is Outcome.SPILL
    assert not router._prewarm.replicating


def test_replication_is_off_by_default(tiny_model: Path) -> None:
    router = make_router(tiny_model, [StatsReplica("replica-0"), StatsReplica("replica-1")])
    fill_the_owner(router)
    assert router.take_prewarm_jobs() == []
