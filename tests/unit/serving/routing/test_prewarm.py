"""Scale-up prewarm: the router's side (joined replicas, pinned requests, owners learned
only after the prefill) on Serve's fake replicas, and the ingress's ``Prewarmer``
driving the real router through a fake deployment."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from ray.serve._private.common import (
    RequestMetadata,
)
from ray.serve._private.request_router.common import PendingRequest

from router import HotPrefix, Outcome
from serving.config import ServiceConfig
from serving.routing.prewarm import (
    REQUEST_ID_PREFIX,
    Prewarmer,
    PrewarmJob,
    prefill_body,
    reply_ok,
)
from serving.contract import RANK_STATS_KEY
from serving.routing.metrics import PrewarmMetrics
from serving.routing.cacheroute import CacheRouteRequestRouter, policy_config
from serving.ingress.request_models import CompletionRequest
from serving.routing.registry import local_routers
from tests.unit.serving.routing import test_cacheroute as test_ray_router
from tests.unit.serving.routing.test_cacheroute import LOOP, choose, make_router, on_loop
from tests.unit.serving.routing.test_cacheroute_failover import StatsReplica

# The tiny model with its real tokenizer, shared with the adapter's own tests.
tiny_model = test_ray_router.tiny_model

BLOCK = 16
PREFIXES = 4
# Serve ids of the requests made here (the router caches tokens under this id).
_REQUEST_IDS = itertools.count()


def make_prewarm_router(model: Path, replicas: list[StatsReplica], *,
                        prewarm: bool = True) -> CacheRouteRequestRouter:
    return make_router(model, replicas, failover={"prewarm_on_scale_up": prewarm,
                                                  "prewarm_prefixes": PREFIXES})


def scaled_up_router(model: Path) -> tuple[CacheRouteRequestRouter, list[StatsReplica]]:
    """A 2-replica router that routed traffic, then saw replica-2 (rank 2) join."""
    replicas = [ranked_replica(0), ranked_replica(1)]
    router = make_prewarm_router(model, replicas)
    warm_up(router)
    scale_up(router, replicas, ranked_replica(2))
    return router, replicas


def ranked_replica(rank: int) -> StatsReplica:
    replica = StatsReplica(f"replica-{rank}")
    replica.stats = {RANK_STATS_KEY: rank}
    return replica


def prompt(head: int, question: int = 0) -> list[int]:
    """Three blocks shared by every request of ``head``, then a question of its own."""
    return [head * 1000 + i for i in range(3 * BLOCK)] + [900_000 + question] * 5


def completion(tokens: list[int], *, request_id: str | None = None) -> PendingRequest:
    body = CompletionRequest(model="m", prompt=tokens, max_tokens=1,
                             **({"request_id": request_id} if request_id else {}))
    meta = RequestMetadata(request_id="r", internal_request_id=f"i-{next(_REQUEST_IDS)}")
    return on_loop(lambda: PendingRequest(args=[body], kwargs={}, metadata=meta))


def warm_up(router: CacheRouteRequestRouter, heads: int = 40) -> None:
    """Traffic on ``heads`` prefixes; head h gets h % 3 + 1 requests (varied heat)."""
    for head in range(heads):
        for question in range(head % 3 + 1):
            choose(router, completion(prompt(head, question)))


def scale_up(router: CacheRouteRequestRouter, replicas: list[StatsReplica],
             joiner: StatsReplica) -> None:
    replicas.append(joiner)
    on_loop(router.update_replicas, list(replicas))


def test_prewarm_is_off_by_default_and_then_tracks_nothing(tiny_model: Path) -> None:
    assert policy_config(ServiceConfig()).hot_prefix_capacity == 0
    replicas = [ranked_replica(0), ranked_replica(1)]
    router = make_prewarm_router(tiny_model, replicas, prewarm=False)
    warm_up(router, heads=5)
    scale_up(router, replicas, ranked_replica(2))
    assert router.take_prewarm_jobs() == []


def test_a_replica_that_joins_gets_the_hottest_prefixes_of_its_arc_once(
        tiny_model: Path) -> None:
    replicas = [ranked_replica(0), ranked_replica(1)]
    router = make_prewarm_router(tiny_model, replicas)
    assert router.take_prewarm_jobs() == []  # the deployment's own start is no scale-up
    warm_up(router)
    scale_up(router, replicas, ranked_replica(2))
    (job,) = router.take_prewarm_jobs()
    assert job.replica_id == "replica-2"
    assert len(job.prefixes) == PREFIXES
    heats = [p.heat for p in job.prefixes]
    assert heats == sorted(heats, reverse=True)
    policy = router.policy
    for prefix in job.prefixes:
        # Every prefix is of the newcomer's arc, cut to the blocks its requests share.
        assert policy._ring.owner(prefix.ring_key) == "replica-2"
        assert prefix.token_ids == tuple(prompt(prefix.token_ids[0] // 1000)[:3 * BLOCK])
    assert router.take_prewarm_jobs() == []


def test_a_joiner_waits_for_its_ring_seat_before_its_arc_is_read(tiny_model: Path) -> None:
    replicas = [ranked_replica(0), ranked_replica(1)]
    router = make_prewarm_router(tiny_model, replicas)
    warm_up(router)
    joiner = StatsReplica("replica-2")  # no rank reported yet
    scale_up(router, replicas, joiner)
    assert router.take_prewarm_jobs() == []
    joiner.stats = {RANK_STATS_KEY: 2}  # its first routing stats arrive
    on_loop(router.update_replicas, list(replicas))
    (job,) = router.take_prewarm_jobs()
    assert job.replica_id == "replica-2" and job.prefixes


def test_a_joiner_that_leaves_before_its_prewarm_is_dropped(tiny_model: Path) -> None:
    router, replicas = scaled_up_router(tiny_model)
    on_loop(router.update_replicas, replicas[:2])
    assert router.take_prewarm_jobs() == []


def test_a_prewarm_goes_to_its_replica_alone_and_teaches_only_once_done(
        tiny_model: Path) -> None:
    router, _ = scaled_up_router(tiny_model)
    (job,) = router.take_prewarm_jobs()
    prefix = job.prefixes[0]
    old_owner = choose(router, completion(list(prefix.token_ids) + [1]))[0][0]
    assert old_owner != "replica-2"

    request_id = router.issue_prewarm_id("replica-2")
    assert request_id.startswith(REQUEST_ID_PREFIX)
    decisions = router.last_decision
    assert choose(router, completion(list(prefix.token_ids), request_id=request_id)) == [
        ["replica-2"]]
    assert router.last_decision is decisions  # not a routing decision
    # Sent but not finished: the prefix still goes to its old owner.
    assert choose(router, completion(list(prefix.token_ids) + [2])) == [[old_owner]]
    # An id the router did not issue pins nothing.
    assert choose(router, completion(list(prefix.token_ids) + [3],
                                     request_id=f"{REQUEST_ID_PREFIX}replica-2-x")) == [
        [old_owner]]

    router.on_prewarmed(request_id, prefix, ok=True)
    assert choose(router, completion(list(prefix.token_ids) + [4])) == [["replica-2"]]
    assert router.last_decision.outcome is Outcome.OWNER_HIT
    # Reported once: the id pins nothing any more, the request is routed as usual.
    before = router.last_decision
    choose(router, completion(list(prefix.token_ids), request_id=request_id))
    assert router.last_decision is not before


def test_a_failed_prewarm_teaches_nothing(tiny_model: Path) -> None:
    router, _ = scaled_up_router(tiny_model)
    (job,) = router.take_prewarm_jobs()
    prefix = job.prefixes[0]
    request_id = router.issue_prewarm_id("replica-2")
    router.on_prewarmed(request_id, prefix, ok=False)
    assert choose(router, completion(list(prefix.token_ids) + [1])) != [["replica-2"]]


def test_a_prewarm_for_a_replica_that_left_is_offered_nowhere(tiny_model: Path) -> None:
    replicas = [ranked_replica(0), ranked_replica(1)]
    router = make_prewarm_router(tiny_model, replicas)
    request_id = router.issue_prewarm_id("replica-9")
    assert choose(router, completion(prompt(1), request_id=request_id)) == []


# --- the ingress's Prewarmer ----------------------------------------------------------


class FakeDeployment:
    """Routes each completion body with the real router, as Serve would, and answers
    like the engine: a reply object, or an error for the replicas in ``failing``."""

    def __init__(self, router: CacheRouteRequestRouter) -> None:
        self.router = router
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.failing: set[str] = set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, body: dict[str, Any]):
        request = CompletionRequest.model_validate(body)
        meta = RequestMetadata(request_id="r", internal_request_id=f"p-{next(_REQUEST_IDS)}")
        tiers = await self.router.choose_replicas(
            list(self.router.curr_replicas.values()),
            PendingRequest(args=[request], kwargs={}, metadata=meta))
        replica = tiers[0][0].replica_id.unique_id
        self.sent.append((replica, body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        yield Reply(error=ErrorBody() if replica in self.failing else None)


class Reply:
    def __init__(self, error: Any = None) -> None:
        self.error = error


class ErrorBody:
    message = "engine failed"


def make_prewarmer(router: Any, deployment: Any, registry: CollectorRegistry,
                   **kwargs: Any) -> Prewarmer:
    return Prewarmer(model="m", router=lambda: router, send=deployment.send,
                     metrics=PrewarmMetrics(registry), **kwargs)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_the_prewarmer_sends_each_hot_prefix_to_the_joiner_then_it_owns_them(
        tiny_model: Path) -> None:
    router, _ = scaled_up_router(tiny_model)
    # The ingress finds this process's router of its deployment by name.
    assert local_routers().router_of("LLMServer:m") is router
    deployment = FakeDeployment(router)
    registry = CollectorRegistry()
    prewarmer = make_prewarmer(router, deployment, registry, concurrency=2)
    assert LOOP.run_until_complete(prewarmer.run_once()) == PREFIXES
    assert [replica for replica, _ in deployment.sent] == ["replica-2"] * PREFIXES
    assert deployment.most_in_flight <= 2
    assert sample(registry, "cacheroute_prewarm_sent_total") == PREFIXES
    assert sample(registry, "cacheroute_prewarm_prefixes_total", result="succeeded") == PREFIXES
    assert sample(registry, "cacheroute_prewarm_replicas_total") == 1
    assert sample(registry, "cacheroute_prewarm_seconds_count") == 1
    for _, body in deployment.sent:
        choose(router, completion(body["prompt"] + [7]))
        assert router.last_decision.replica_id == "replica-2"
        assert router.last_decision.outcome is Outcome.OWNER_HIT
    assert LOOP.run_until_complete(prewarmer.run_once()) == 0  # nothing new joined


def test_failed_prewarms_are_counted_and_teach_nothing(tiny_model: Path) -> None:
    router, _ = scaled_up_router(tiny_model)
    deployment = FakeDeployment(router)
    deployment.failing = {"replica-2"}
    registry = CollectorRegistry()
    assert LOOP.run_until_complete(make_prewarmer(router, deployment, registry).run_once()) == 0
    assert sample(registry, "cacheroute_prewarm_prefixes_total", result="failed") == PREFIXES
    for _, body in deployment.sent:
        choose(router, completion(body["prompt"] + [7]))
        assert router.last_decision.replica_id != "replica-2"
    assert not router._prewarm.pinned  # every issued id was reported back


class StuckRouter:
    """A router with one job whose replica never answers."""

    def __init__(self, prefix: HotPrefix) -> None:
        self.jobs = [PrewarmJob(replica_id="r", prefixes=(prefix,))]
        self.reported: list[tuple[str, bool]] = []

    def take_prewarm_jobs(self) -> list[PrewarmJob]:
        jobs, self.jobs = self.jobs, []
        return jobs

    def issue_prewarm_id(self, replica_id: str) -> str:
        return f"{REQUEST_ID_PREFIX}{replica_id}-1"

    def on_prewarmed(self, request_id: str, prefix: HotPrefix, ok: bool) -> None:
        self.reported.append((request_id, ok))


class NeverAnswers:
    async def send(self, body: dict[str, Any]):
        await asyncio.Event().wait()
        yield None


def test_a_prewarm_that_times_out_is_a_failure_reported_to_the_router() -> None:
    prefix = HotPrefix(ring_key=1, token_ids=(1, 2), blocks=1, cache_salt="t",
                       lora_name=None, lora_path=None, heat=1.0)
    router = StuckRouter(prefix)
    registry = CollectorRegistry()
    prewarmer = make_prewarmer(router, NeverAnswers(), registry, timeout_s=0.01)
    assert LOOP.run_until_complete(prewarmer.run_once()) == 0
    assert router.reported == [(f"{REQUEST_ID_PREFIX}r-1", False)]
    assert sample(registry, "cacheroute_prewarm_prefixes_total", result="failed") == 1


def test_no_router_yet_means_nothing_to_do() -> None:
    prewarmer = Prewarmer(model="m", router=lambda: None, send=NeverAnswers().send,
                          metrics=PrewarmMetrics(CollectorRegistry()))
    assert LOOP.run_until_complete(prewarmer.run_once()) == 0


def test_the_prefill_body_is_a_valid_one_token_completion_of_the_prefix() -> None:
    prefix = HotPrefix(ring_key=1, token_ids=(5, 6, 7), blocks=1, cache_salt="tenant",
                       lora_name=None, lora_path=None, heat=1.0)
    request = CompletionRequest.model_validate(prefill_body("m", prefix, "id-1"))
    assert (request.prompt, request.max_tokens, request.request_id, request.cache_salt) == (
        [5, 6, 7], 1, "id-1", "tenant")
    assert reply_ok(Reply()) and reply_ok([Reply()])
    assert not reply_ok(Reply(error=ErrorBody())) and not reply_ok([])


def test_prewarm_settings_are_validated_and_size_the_hot_table() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ServiceConfig.model_validate({"failover": {"prewarm_prefixes": 0}})
    config = ServiceConfig.model_validate({
        "engine": {"block_size": 16, "max_model_len": 1000},
        "failover": {"prewarm_on_scale_up": True, "prewarm_prefixes": 100}})
    policy = policy_config(config)
    assert policy.hot_prefix_capacity >= 100
    # A replayed prefix plus its one generated token fits the context.
    assert policy.hot_prefix_max_blocks * 16 <= 1000 - 1
