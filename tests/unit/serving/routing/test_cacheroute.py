"""The Ray Serve adapter on Ray's own fake replicas: no cluster, real tokenizer.

Also the contract of every Ray Serve hook the adapter and server rely on, so a Ray
upgrade that changes one fails here rather than in production.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from pathlib import Path

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.test_utils import FakeRunningReplica
from ray.serve.llm.deployment import LLMServer
from ray.serve.request_router import RequestRouter
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

from router import Outcome, RouteRequest
from serving.config import ServiceConfig
from serving.routing.cacheroute import CacheRouteRequestRouter, policy_config
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# Serve's router binds to the running loop on first use; every call here runs on one.
LOOP = asyncio.new_event_loop()


def on_loop(fn, *args):
    async def call():
        return fn(*args)
    return LOOP.run_until_complete(call())


def make_router(model: Path, replicas: list[FakeRunningReplica], *,
                failover: dict | None = None, **routing) -> CacheRouteRequestRouter:
    # The bound alone unless a test sets a floor: these tests spill at a few requests.
    routing = {"load_floor": 0, **routing}
    config = ServiceConfig.model_validate({"routing": {"policy": "cacheroute", **routing},
                                           "engine": {"block_size": 16},
                                           "failover": failover or {}})
    router = CacheRouteRequestRouter(deployment_id=DeploymentID(name="LLMServer:m"),
                                     handle_source=DeploymentHandleSource.UNKNOWN,
                                     use_replica_queue_len_cache=True)
    router.initialize_state(config_json=config.model_dump_json(), tokenizer_path=str(model))
    on_loop(router.update_replicas, replicas)
    return router


def make_pending(system: str, question: str, *, session: str = "") -> PendingRequest:
    body = ChatCompletionRequest(model="m", max_tokens=4, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": question}])
    meta = RequestMetadata(request_id="r", internal_request_id=f"i-{question}",
                           session_id=session)
    # PendingRequest creates an asyncio.Future: build it on the routing loop.
    return on_loop(lambda: PendingRequest(args=[body], kwargs={}, metadata=meta))


def make_replicas(n: int) -> list[FakeRunningReplica]:
    return [FakeRunningReplica(f"replica-{i}") for i in range(n)]


def choose(router: CacheRouteRequestRouter, pending: PendingRequest | None) -> list[list[str]]:
    async def run() -> list[list[str]]:
        tiers = await router.choose_replicas(list(router.curr_replicas.values()), pending)
        return [[r.replica_id.unique_id for r in tier] for tier in tiers]
    return LOOP.run_until_complete(run())


SYSTEM = "You are the assistant of Acme Corp. " * 30


def route_request(router: CacheRouteRequestRouter, pending: PendingRequest) -> RouteRequest:
    """The request as the router's core sees it (tokenised once, kept until it completes)."""
    return LOOP.run_until_complete(router._routes.of(pending))


def in_flight(router: CacheRouteRequestRouter,
              replicas: list[FakeRunningReplica]) -> Mapping[str, int]:
    """The loads the router decides with."""
    return router._loads({r.replica_id.unique_id: r for r in replicas}).in_flight


def test_a_cacheable_request_is_offered_its_chosen_replica_alone(tiny_model: Path) -> None:
    # Serve waits and asks again while that replica is full, rather than falling
    # through to a replica that would prefill the whole prompt.
    router = make_router(tiny_model, make_replicas(4))
    tiers = choose(router, make_pending(SYSTEM, "q1"))
    assert router.last_decision is not None
    assert tiers == [[router.last_decision.replica_id]]


def test_a_keyless_request_is_offered_every_replica_once_chosen_first(
        tiny_model: Path) -> None:
    router = make_router(tiny_model, make_replicas(4))
    tiers = choose(router, None)
    assert router.last_decision is not None and router.last_decision.outcome is Outcome.NO_KEY
    assert all(len(t) == 1 for t in tiers)
    assert sorted(t[0] for t in tiers) == [f"replica-{i}" for i in range(4)]
    assert tiers[0][0] == router.last_decision.replica_id


def test_same_system_prompt_same_replica_and_owner_hit(tiny_model: Path) -> None:
    router = make_router(tiny_model, make_replicas(4))
    first = choose(router, make_pending(SYSTEM, "first question"))[0][0]
    assert router.last_decision.outcome is Outcome.RING_HOME
    again = choose(router, make_pending(SYSTEM, "another question"))[0][0]
    assert again == first
    assert router.last_decision.outcome is Outcome.OWNER_HIT
    assert router.last_decision.matched_blocks >= 1


def test_every_decision_leaves_its_prediction_for_the_ingress(tiny_model: Path) -> None:
    # Tracing off (the default): the routing-accuracy counters still get each
    # decision's predicted cached tokens, under Serve's internal request id.
    from serving.routing.registry import local_routers

    predictions = local_routers().predictions
    router = make_router(tiny_model, make_replicas(4))
    choose(router, make_pending(SYSTEM, "first question"))
    first = predictions.pop("i-first question")
    assert first is not None
    assert (first.replica_id, first.outcome, first.cached_tokens) == (
        router.last_decision.replica_id, "ring_home", 0)
    choose(router, make_pending(SYSTEM, "another question"))
    again = predictions.pop("i-another question")
    decision = router.last_decision
    assert again is not None and decision.outcome is Outcome.OWNER_HIT
    assert (again.replica_id, again.outcome) == (decision.replica_id, "owner_hit")
    assert again.cached_tokens == decision.matched_blocks * 16 > 0


def test_two_router_instances_agree_without_shared_state(tiny_model: Path) -> None:
    a = make_router(tiny_model, make_replicas(5))
    b = make_router(tiny_model, make_replicas(5))
    for i in range(12):
        pending = make_pending(f"Tenant {i} " * 40, f"question {i}")
        assert choose(a, pending) == choose(b, pending)


def test_session_header_routes_by_session(tiny_model: Path) -> None:
    router = make_router(tiny_model, make_replicas(3))
    choose(router, make_pending("short", "hi", session="user-42"))
    assert router.last_decision.outcome is Outcome.SESSION


def test_dead_replica_leaves_the_ring(tiny_model: Path) -> None:
    replicas = make_replicas(3)
    router = make_router(tiny_model, replicas)
    home = choose(router, make_pending(SYSTEM, "q"))[0][0]
    dead = next(r for r in replicas if r.replica_id.unique_id == home)
    on_loop(router.on_replica_actor_died, dead.replica_id)
    tiers = choose(router, make_pending(SYSTEM, "q"))
    assert home not in [t[0] for t in tiers]
    assert router.last_decision is not None
    # The retry list (failover) still holds every live replica.
    assert len(router.last_decision.ranked) == 2 and home not in router.last_decision.ranked


def counter(name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    from serving.observability.telemetry import render

    for fam in text_string_to_metric_families(render().decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_router_metrics_and_replica_views_follow_decisions(tiny_model: Path) -> None:
    before = {o: counter("cacheroute_router_decisions_total", outcome=o)
              for o in ("ring_home", "owner_hit")}
    removed_before = counter("cacheroute_router_membership_changes_total", change="removed")
    replicas = make_replicas(3)
    router = make_router(tiny_model, replicas)
    pendings = [make_pending(SYSTEM, "first"), make_pending(SYSTEM, "second")]
    home = choose(router, pendings[0])[0][0]
    choose(router, pendings[1])
    assert counter("cacheroute_router_decisions_total", outcome="ring_home") == (
        before["ring_home"] + 1)
    assert counter("cacheroute_router_decisions_total", outcome="owner_hit") == (
        before["owner_hit"] + 1)
    owned = {v.replica: v.owned_blocks for v in router.replica_views()}
    # Both chains were learned on the home: shared blocks once, each tail once.
    blocks = len({h for p in pendings for h in router.policy.block_hashes(
        route_request(router, p))})
    assert owned == {r.replica_id.unique_id: (blocks if r.replica_id.unique_id == home else 0)
                     for r in replicas}
    on_loop(router.on_replica_actor_died, replicas[0].replica_id)
    assert counter("cacheroute_router_membership_changes_total", change="removed") == (
        removed_before + 1)


def test_request_without_body_still_routes(tiny_model: Path) -> None:
    router = make_router(tiny_model, make_replicas(2))
    tiers = choose(router, None)
    assert len(tiers) == 2 and router.last_decision.outcome is Outcome.NO_KEY


def test_policy_config_follows_service_config() -> None:
    config = ServiceConfig.model_validate({"engine": {"block_size": 32, "hash_seed": 7},
                                           "routing": {"load_epsilon": 0.5,
                                                       "virtual_nodes": 50,
                                                       "load_floor": 3}})
    pc = policy_config(config)
    assert (pc.block_size, pc.hash_seed, pc.load_epsilon, pc.virtual_nodes) == (32, "7", 0.5, 50)
    assert pc.load_floor == 3


# --- contract of the Ray Serve hooks used --------------------------------------

@pytest.mark.parametrize(("cls", "method", "params"), [
    (RequestRouter, "choose_replicas", ["self", "candidate_replicas", "pending_request"]),
    (RequestRouter, "update_replicas", ["self", "replicas"]),
    (RequestRouter, "on_replica_actor_died", ["self", "replica_id"]),
    (RequestRouter, "on_request_routed", ["self", "pending_request", "replica_id", "result"]),
    (RequestRouter, "initialize_state", ["self", "kwargs"]),
    (RequestRouter, "on_request_completed", ["self", "replica_id", "internal_request_id"]),
    (RequestRouter, "on_send_request", ["self", "replica_id"]),
    (RequestRouter, "on_new_queue_len_info", ["self", "replica_id", "num_ongoing_requests"]),
    (RequestRouter, "decrement_queue_len_cache", ["self", "replica_id"]),
    (LLMServer, "start", ["self"]),
    (LLMServer, "record_routing_stats", ["self"]),
    (LLMServer, "reset_prefix_cache", ["self"]),
])
def test_ray_serve_hook_signatures(cls: type, method: str, params: list[str]) -> None:
    assert list(inspect.signature(getattr(cls, method)).parameters) == params


def test_ray_serve_request_shapes() -> None:
    fields = set(RequestMetadata.__dataclass_fields__)
    assert {"session_id", "internal_request_id"} <= fields
    assert {"args", "kwargs", "metadata"} <= set(PendingRequest.__dataclass_fields__)
    assert "routing_stats" in dir(FakeRunningReplica)


@pytest.mark.parametrize("path", ["serving.routing.cacheroute:CacheRouteRequestRouter",
                                  "serving.routing.baselines:Pow2Router",
                                  "serving.routing.baselines:RayPrefixRouter"])
def test_serve_can_ship_the_router_class(path: str) -> None:
    """Serve pickles the router's module by value; module-level locks or weak maps
    there would break `serve.status()` and deployment."""
    from ray.serve.config import RequestRouterConfig

    config = RequestRouterConfig(request_router_class=path)
    assert config.get_request_router_class().__name__ == path.rpartition(":")[2]


# --- waiting for a slot on the chosen replica ------------------------------------

def test_a_request_for_a_full_replica_waits_for_its_next_free_slot(tiny_model: Path) -> None:
    replicas = [FakeRunningReplica(f"replica-{i}", max_ongoing_requests=1) for i in range(2)]
    router = make_router(tiny_model, replicas)
    home = choose(router, make_pending(SYSTEM, "warm"))[0][0]
    full = next(r for r in replicas if r.replica_id.unique_id == home)
    on_loop(router.on_send_request, full.replica_id)  # its one slot is taken
    parked = make_pending(SYSTEM, "parked")

    async def scenario() -> list[list[str]]:
        task = asyncio.ensure_future(router.choose_replicas(
            list(router.curr_replicas.values()), parked))
        await asyncio.sleep(0.05)
        assert not task.done(), "offered a full replica instead of waiting"
        router.on_request_completed(full.replica_id, "i-warm")
        router.decrement_queue_len_cache(full.replica_id)
        tiers = await asyncio.wait_for(task, 5)
        return [[r.replica_id.unique_id for r in tier] for tier in tiers]

    assert LOOP.run_until_complete(scenario()) == [[home]]


def test_a_missed_wake_up_falls_back_to_serve_after_the_timeout(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.routing.cacheroute as ray_router

    monkeypatch.setattr(ray_router, "SLOT_WAIT_S", 0.05)
    replicas = [FakeRunningReplica(f"replica-{i}", max_ongoing_requests=1) for i in range(2)]
    router = make_router(tiny_model, replicas)
    home = choose(router, make_pending(SYSTEM, "warm"))[0][0]
    full = next(r for r in replicas if r.replica_id.unique_id == home)
    on_loop(router.on_send_request, full.replica_id)
    # Still offered its own replica: Serve probes it and asks again later.
    assert choose(router, make_pending(SYSTEM, "parked")) == [[home]]


def test_a_waiting_request_is_tokenized_once(tiny_model: Path) -> None:
    router = make_router(tiny_model, make_replicas(2))
    calls: list[object] = []
    tokenizer = router._routes.tokenizer
    real = tokenizer.packed_ids
    tokenizer.packed_ids = lambda body: calls.append(body) or real(body)
    pending = make_pending(SYSTEM, "asked twice")
    first = choose(router, pending)
    assert choose(router, pending) == first
    assert len(calls) == 1
    # Completion releases the kept tokens.
    on_loop(router.on_request_completed, make_replicas(1)[0].replica_id, "i-asked twice")
    choose(router, pending)
    assert len(calls) == 2


def test_in_flight_counts_outlive_the_queue_length_cache_timeout(tiny_model: Path) -> None:
    replicas = make_replicas(2)
    router = make_router(tiny_model, replicas, spill_wait_s=0)  # the bound alone
    home = choose(router, make_pending(SYSTEM, "warm"))[0][0]
    busy = next(r for r in replicas if r.replica_id.unique_id == home)
    for _ in range(2):  # two long generations sent there
        on_loop(router.on_send_request, busy.replica_id)
    # Serve's cache forgets an entry after 10 s without news; the router's own count
    # of what it sent and saw no completion of stays.
    router._replica_queue_len_cache.invalidate_key(busy.replica_id)
    assert in_flight(router, replicas)[home] == 2
    # 2 of 2 in flight there, capacity ceil(1.25 x 3 / 2) = 2: the bound sends the
    # next request of the prefix away instead of onto a replica it thinks idle.
    choose(router, make_pending(SYSTEM, "third"))
    assert (router.last_decision.replica_id, router.last_decision.outcome) != (
        home, Outcome.OWNER_HIT)
    for i in range(2):
        on_loop(router.on_request_completed, busy.replica_id, f"i-long-{i}")
    assert in_flight(router, replicas)[home] == 0
