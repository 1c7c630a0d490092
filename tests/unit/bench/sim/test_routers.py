"""Simulated routers: the char tree against Ray's own PrefixTree, and each policy's picks."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.sim.block_cache import Allocation
from bench.sim.char_tree import CharPrefixTree
from bench.sim.routers import make_router
from bench.sim.routers.base import Placement, least_busy
from bench.sim.routers.cacheroute import CacheRouteRouter
from bench.sim.routers.pow2 import Pow2Router, two_choices
from bench.sim.routers.ray_prefix import RayPrefixRouter
from router import InFlightCounts, PolicyConfig, WaitKind
from tests.unit.bench.sim.sim_factories import make_hashes, make_request

REPLICAS = ("r0", "r1", "r2")
texts = st.text(alphabet="ab c", min_size=0, max_size=12)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(inserts=st.lists(st.tuples(texts, st.sampled_from(REPLICAS)), max_size=12),
       queries=st.lists(texts, min_size=1, max_size=6))
def test_char_tree_answers_as_rays_prefix_tree(inserts: list[tuple[str, str]],
                                               queries: list[str]) -> None:
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTree,
    )

    ray_tree = PrefixTree()
    ray_tree.add_tenants(list(REPLICAS), 0.0)
    model = CharPrefixTree(REPLICAS)
    for step, (text, replica) in enumerate(inserts):
        ray_tree.insert(text, replica, float(step))
        model.insert(text, replica)
        assert model.char_count == ray_tree.tenant_to_char_count
        assert model.smallest() == ray_tree.get_smallest_tenants()
    for query in queries:
        matched_text, tenants = ray_tree.prefix_match(query)
        assert model.prefix_match(query) == (len(matched_text), tenants)


def test_two_choices_draws_distinct_replicas_like_serve() -> None:
    rng = random.Random(1)
    draws = [two_choices(("a", "b", "c", "d"), rng) for _ in range(200)]
    assert all(len(set(d)) == 2 for d in draws)
    assert {r for d in draws for r in d} == {"a", "b", "c", "d"}
    assert two_choices(("a",), rng) == ("a",)
    assert sorted(two_choices(("a", "b"), rng)) == ["a", "b"]


def test_serve_picks_the_least_busy_with_room_first_of_equals() -> None:
    loads = {"a": 2, "b": 1, "c": 1}
    assert least_busy(["a", "b", "c"], loads, None) == "b"
    assert least_busy(["a", "c", "b"], loads, 2) == "c"
    assert least_busy(["a"], loads, 2) is None


def test_pow2_takes_the_less_loaded_of_its_draw() -> None:
    router = Pow2Router(["a", "b"], rng=random.Random(0))
    in_flight = InFlightCounts(frozenset({"a", "b"}))
    in_flight.add("a", 3)
    assert {router.route(make_request(), in_flight, None).replica for _ in range(20)} == {"b"}
    in_flight.add("b", 3)
    assert router.route(make_request(), in_flight, 3).replica is None


def test_ray_prefix_sends_a_new_prefix_to_the_smallest_and_repeats_to_its_owner() -> None:
    router = RayPrefixRouter(list(REPLICAS), rng=random.Random(0))
    in_flight = InFlightCounts(frozenset(REPLICAS))
    first = router.route(make_request(text="tenant A prompt, question 1"), in_flight, None)
    assert (first.replica, first.outcome) == ("r0", "smallest_tenant")
    router.on_placed(make_request(text="tenant A prompt, question 1"), "r0", 0.0)
    # Sharing "tenant " (7 of 15 characters) would be a match; this shares nothing.
    new = router.route(make_request(text="Beta's prompt"), in_flight, None)
    assert (new.replica, new.outcome) == ("r1", "smallest_tenant")
    again = router.route(make_request(text="tenant A prompt, question 2"), in_flight, None)
    assert (again.replica, again.outcome) == ("r0", "prefix_match")
    # Its owner full: Ray keeps asking for the owner, so the request waits for it.
    in_flight.add("r0", 2)
    held = router.route(make_request(text="tenant A prompt, question 3"), in_flight, 2)
    assert (held.replica, held.candidates) == (None, frozenset({"r0"}))


def test_cacheroute_holds_a_cacheable_request_for_its_full_choice() -> None:
    # A wide load bound, so that only Serve's max_ongoing_requests cap is reached.
    router = make_router("cacheroute", list(REPLICAS), clock=lambda: 0.0, seed=0,
                         policy_config=PolicyConfig(block_size=4, load_epsilon=10.0))
    in_flight = InFlightCounts(router.replicas)  # type: ignore[attr-defined]
    home = router.route(make_request(blocks=(1, 2)), in_flight, None).replica
    assert home is not None
    in_flight.add(home, 2)
    waiting = make_request(1, blocks=(1, 2))
    placed = router.route(waiting, in_flight, 2)
    # Waiting for the owner beats a full prefill on a replica that has room: the
    # router holds it in that replica's queue (router/admission.py), not Serve.
    assert (placed.replica, placed.candidates) == (None, None)
    assert placed.hold is not None and (placed.hold.kind, placed.hold.replicas) == (
        WaitKind.SLOT, frozenset({home}))
    assert router.outcomes["fallthrough"] == 0  # type: ignore[attr-defined]
    # A completion there wakes it, and it is decided again with the freed slot.
    in_flight.add(home, -1)
    assert router.on_completed(make_request(0), home) == [waiting]  # type: ignore[attr-defined]
    resumed = router.resume(waiting, in_flight, 2)  # type: ignore[attr-defined]
    assert (resumed.replica, resumed.outcome) == (home, "owner_hit")


def test_cacheroute_falls_through_the_ranked_list_for_a_keyless_request() -> None:
    router = make_router("cacheroute", list(REPLICAS), clock=lambda: 0.0, seed=0,
                         policy_config=PolicyConfig(block_size=4, load_epsilon=10.0))
    in_flight = InFlightCounts(router.replicas)  # type: ignore[attr-defined]
    for replica in REPLICAS[:2]:
        in_flight.add(replica, 2)
    placed = router.route(make_request(blocks=()), in_flight, 2)
    # NO_KEY picks the least loaded replica, which has room: no fall-through needed.
    assert (placed.replica, placed.outcome) == (REPLICAS[2], "no_key")
    in_flight.add(REPLICAS[2], 2)
    assert router.route(make_request(blocks=()), in_flight, 2) == Placement(None, "no_key")


def test_cacheroute_follows_kv_events_of_the_modelled_engines() -> None:
    router = CacheRouteRouter(list(REPLICAS), PolicyConfig(block_size=4), clock=lambda: 0.0)
    in_flight = InFlightCounts(router.replicas)
    home = router.route(make_request(blocks=(1, 2)), in_flight, None).replica
    assert home is not None
    evicted = Allocation(hashes=(), anonymous_blocks=0, hit_blocks=0, stored=(),
                         evicted=tuple(make_hashes(2, 1)))
    router.on_kv_events(home, evicted, 1.0)
    # Nobody holds the prefix any more: back to the ring home of its first block.
    assert router.route(make_request(blocks=(1, 2)), in_flight, None).outcome == "ring_home"
    stored = Allocation(hashes=(), anonymous_blocks=0, hit_blocks=0, stored=tuple(
        make_hashes(1, 2)), evicted=())
    other = next(r for r in REPLICAS if r != home)
    router.on_kv_events(other, stored, 2.0)
    in_flight.add(home, 1)
    decision = router.route(make_request(blocks=(1, 2)), in_flight, None)
    assert (decision.replica, decision.outcome) == (other, "owner_hit")
