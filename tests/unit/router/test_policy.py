"""CacheAwarePolicy: exact outcomes per path, determinism across instances and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import (
    FakeClock,
    make_batch,
    make_config,
    make_policy,
    make_removed,
    make_replica_ids,
    make_request,
    make_stored,
)

from router import Decision, EmptyRingError, HashRing, Outcome, PolicyConfig, RouteRequest
from router.ring import stable_key

REPO_ROOT = Path(__file__).resolve().parents[3]


def ring_of(*replicas: str) -> HashRing:
    # The ring the factories' policy builds (make_config: default virtual nodes).
    return HashRing(replicas, virtual_nodes=make_config().virtual_nodes)


def test_first_request_goes_to_the_ring_home_of_its_first_block() -> None:
    policy = make_policy(["a", "b", "c"])
    request = make_request(16)
    first = policy.block_hashes(request)[0]
    decision = policy.select(request, {})
    order = tuple(ring_of("a", "b", "c").walk(first))
    assert decision == Decision(
        replica_id=order[0],
        outcome=Outcome.RING_HOME,
        matched_blocks=0,
        total_blocks=4,
        ranked=order,
    )


def test_repeat_and_shared_prefix_are_owner_hits() -> None:
    policy = make_policy(["a", "b", "c"])
    home = policy.select(make_request(16), {}).replica_id
    again = policy.select(make_request(16), {})
    assert (again.replica_id, again.outcome, again.matched_blocks) == (home, Outcome.OWNER_HIT, 4)
    # Same first 8 tokens (2 blocks), different tail.
    shared = policy.select(make_request(tokens=[*range(1000, 1008), 1, 2, 3, 4, 5]), {})
    assert (shared.replica_id, shared.outcome, shared.matched_blocks) == (
        home,
        Outcome.OWNER_HIT,
        2,
    )
    assert shared.total_blocks == 3


def test_full_home_spills_along_the_ring_then_both_owners_serve() -> None:
    policy = make_policy(["a", "b", "c"])
    order = policy.select(make_request(16), {}).ranked
    # capacity = ceil(1.25 * (4 + 1) / 3) = 3: the home is full, the next is not.
    busy = {order[0]: 3, order[1]: 1}
    spilled = policy.select(make_request(16), busy)
    assert (spilled.replica_id, spilled.outcome, spilled.matched_blocks) == (
        order[1],
        Outcome.SPILL,
        0,
    )
    assert spilled.ranked == order[1:2] + order[:1] + order[2:]
    # Now both hold the prefix: the less loaded owner wins, ties go in ring order.
    assert policy.select(make_request(16), {order[0]: 1, order[1]: 0}).replica_id == order[1]
    tie = policy.select(make_request(16), {})
    assert (tie.replica_id, tie.outcome) == (order[0], Outcome.OWNER_HIT)


def test_a_held_spill_is_recorded_only_when_committed() -> None:
    policy = make_policy(["a", "b", "c"])
    order = policy.select(make_request(16), {}).ranked
    busy = {order[0]: 3, order[1]: 1}
    assert policy.spill_owners(make_request(16)) == {order[0]}
    # The same decision as select's, and the index unchanged: still one owner.
    spilled = policy.select(make_request(16), busy, hold_spill=True)
    assert (spilled.replica_id, spilled.outcome) == (order[1], Outcome.SPILL)
    assert policy.spill_owners(make_request(16)) == {order[0]}
    assert policy.select(make_request(16), busy, hold_spill=True) == spilled
    policy.commit(make_request(16), spilled)
    assert policy.spill_owners(make_request(16)) == {order[0], order[1]}
    # Other outcomes are recorded at once, held or not.
    fresh = make_request(tokens=[*range(300, 316)])
    home = policy.select(fresh, {}, hold_spill=True).replica_id
    assert policy.spill_owners(fresh) == {home}
    # A replica that left meanwhile is not recorded; no full block, no owners.
    policy.set_replicas(["a", "b", "c", "d"])
    policy.on_replica_removed("d")
    policy.commit(make_request(tokens=[*range(500, 516)]),
                  Decision(replica_id="d", outcome=Outcome.RING_HOME, matched_blocks=0,
                           total_blocks=4, ranked=("d",)))
    assert policy.spill_owners(make_request(tokens=[*range(500, 516)])) == frozenset()
    assert policy.spill_owners(make_request(3)) == frozenset()


def test_new_prefix_walks_past_a_home_above_the_mean() -> None:
    policy = make_policy(["a", "b", "c", "d"])
    order = tuple(ring_of("a", "b", "c", "d").walk(policy.block_hashes(make_request(16))[0]))
    # Mean capacity = ceil((0 + 2 + 0 + 1 + 1) / 4) = 1: the home (2) and the next (1)
    # are above it; the bounded-load capacity (ceil(1.25 * 4 / 4) = 2) would take the next.
    loads = {order[0]: 2, order[1]: 1, order[2]: 0, order[3]: 0}
    decision = policy.select(make_request(16), loads)
    assert decision == Decision(
        replica_id=order[2],
        outcome=Outcome.RING_BALANCE,
        matched_blocks=0,
        total_blocks=4,
        ranked=(order[2], order[0], order[1], order[3]),
    )
    # Learned there: the next request is an owner hit on it, not on the ring home.
    again = policy.select(make_request(16), {})
    assert (again.replica_id, again.outcome) == (order[2], Outcome.OWNER_HIT)


def test_new_prefix_stays_home_at_the_mean() -> None:
    policy = make_policy(["a", "b", "c", "d"])
    home = ring_of("a", "b", "c", "d").owner(policy.block_hashes(make_request(16))[0])
    # Mean capacity = ceil((4 + 1) / 4) = 2; every replica holds 1.
    decision = policy.select(make_request(16), dict.fromkeys("abcd", 1))
    assert (decision.replica_id, decision.outcome) == (home, Outcome.RING_HOME)


def test_owned_prefix_is_not_balanced_away_from_its_owner() -> None:
    policy = make_policy(["a", "b", "c", "d"])
    home = policy.select(make_request(16), {}).replica_id
    others = sorted({"a", "b", "c", "d"} - {home})
    # 7 in flight: the owner (2) is above the mean (capacity ceil(8 / 4) = 2) but within
    # the load bound (capacity ceil(1.25 * 8 / 4) = 3).
    decision = policy.select(make_request(16), {home: 2, others[0]: 2, others[1]: 2,
                                                 others[2]: 1})
    assert (decision.replica_id, decision.outcome) == (home, Outcome.OWNER_HIT)


def test_a_session_is_not_balanced_away_from_its_home() -> None:
    policy = make_policy(["a", "b", "c", "d"])
    home = ring_of("a", "b", "c", "d").owner(stable_key("conv-7"))
    others = sorted({"a", "b", "c", "d"} - {home})
    decision = policy.select(make_request(16, session_id="conv-7"),
                             {home: 2, others[0]: 2, others[1]: 2, others[2]: 1})
    assert (decision.replica_id, decision.outcome) == (home, Outcome.SESSION)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(loads=st.lists(st.integers(0, 20), min_size=5, max_size=5),
       start=st.integers(0, 10_000))
def test_new_prefix_lands_at_or_below_the_mean(loads: list[int], start: int) -> None:
    replicas = make_replica_ids(5)
    policy = make_policy(replicas)
    in_flight = dict(zip(replicas, loads))
    request = make_request(16, start=start)
    decision = policy.select(request, in_flight)
    chosen_load = in_flight[decision.replica_id]
    # Taking it leaves the chosen replica at most at ceil(mean), counting this request.
    assert chosen_load + 1 <= -(-(sum(loads) + 1) // len(replicas))
    walk = list(ring_of(*replicas).walk(policy.block_hashes(request)[0]))
    passed = walk[:walk.index(decision.replica_id)]
    assert all(in_flight[r] + 1 > -(-(sum(loads) + 1) // len(replicas)) for r in passed)
    assert decision.outcome is (Outcome.RING_BALANCE if passed else Outcome.RING_HOME)


def test_send_order_is_the_choice_alone_unless_nothing_is_cached() -> None:
    policy = make_policy(["a", "b", "c"])
    cached = policy.select(make_request(16), {})
    assert cached.send_order == (cached.replica_id,)
    keyless = policy.select(RouteRequest(), {})
    assert keyless.outcome is Outcome.NO_KEY and keyless.send_order == keyless.ranked
    failover = cached.failover({cached.replica_id})
    assert failover.send_order == failover.ranked == cached.ranked[1:]


def test_ceiling_also_binds_owner_hits() -> None:
    policy = make_policy(["a", "b"], load_epsilon=0.0)
    home = policy.select(make_request(16), {}).replica_id
    other = ({"a", "b"} - {home}).pop()
    # capacity = ceil((2 + 1) / 2) = 2; the owner holds 2.
    decision = policy.select(make_request(16), {home: 2, other: 0})
    assert (decision.replica_id, decision.outcome) == (other, Outcome.SPILL)


def test_below_the_load_floor_an_owner_keeps_its_prefix() -> None:
    """Four replicas, two requests in flight on the owner, none elsewhere: the bound
    alone (ceil(1.25 x 3 / 4) = 1) spills; a floor of 3 keeps the request home."""
    replicas = ["a", "b", "c", "d"]
    home = make_policy(replicas).select(make_request(16), {}).replica_id
    loads = {r: 0 for r in replicas} | {home: 2}
    bound_alone = make_policy(replicas)
    bound_alone.select(make_request(16), {})
    assert bound_alone.select(make_request(16), loads).outcome is Outcome.SPILL
    floored = make_policy(replicas, load_floor=3)
    floored.select(make_request(16), {})
    decision = floored.select(make_request(16), loads)
    assert (decision.replica_id, decision.outcome) == (home, Outcome.OWNER_HIT)
    # At the floor the bound counts again: the owner holds 3 and spills.
    assert floored.select(make_request(16), loads | {home: 3}).outcome is Outcome.SPILL


def test_the_load_floor_leaves_a_new_prefix_placed_by_the_mean() -> None:
    """A new prefix has no hit to keep, so the floor does not hold it on a home busier
    than the mean: with a floor of 4 and one request on the home, it still goes past
    the home to an idle replica, as without the floor, while a known prefix stays."""
    replicas = ["a", "b", "c", "d"]
    home = make_policy(replicas).select(make_request(16), {}).replica_id
    loads = {r: 0 for r in replicas} | {home: 1}
    for policy in (make_policy(replicas), make_policy(replicas, load_floor=4)):
        placed = policy.select(make_request(16), loads)
        assert placed.replica_id != home and placed.outcome is Outcome.RING_BALANCE
    floored = make_policy(replicas, load_floor=4)
    floored.select(make_request(16), {})
    kept = floored.select(make_request(16), loads | {home: 3})
    assert (kept.replica_id, kept.outcome) == (home, Outcome.OWNER_HIT)


def test_leaving_full_owners_for_a_home_without_the_prefix_is_a_spill() -> None:
    home = make_policy(["a", "b"]).select(make_request(16), {}).replica_id
    other = ({"a", "b"} - {home}).pop()
    policy = make_policy(["a", "b"], load_epsilon=0.0)
    # A busy home: the new prefix is placed past it, at the mean (its owner is `other`).
    placed = policy.select(make_request(16), {home: 1, other: 0})
    assert (placed.replica_id, placed.outcome) == (other, Outcome.RING_BALANCE)
    # Its owner is full (capacity ceil(3 / 2) = 2) and the home has room: the home
    # holds none of the prefix, so the bound made this request a miss -- a spill.
    decision = policy.select(make_request(16), {home: 0, other: 2})
    assert (decision.replica_id, decision.outcome, decision.matched_blocks) == (
        home, Outcome.SPILL, 0)


def test_session_affinity_uses_the_session_home() -> None:
    policy = make_policy(["a", "b", "c", "d"])
    decision = policy.select(make_request(16, session_id="conv-42"), {})
    assert decision.outcome is Outcome.SESSION
    assert decision.ranked == tuple(ring_of("a", "b", "c", "d").walk(stable_key("conv-42")))
    without = make_policy(["a", "b", "c", "d"], session_affinity=False)
    assert without.select(make_request(16, session_id="conv-42"), {}).outcome is Outcome.RING_HOME
    # A session without tokens still has a home.
    bare = policy.select(RouteRequest(session_id="conv-42"), {})
    assert (bare.replica_id, bare.outcome, bare.total_blocks) == (
        decision.replica_id,
        Outcome.SESSION,
        0,
    )


def test_no_key_goes_to_the_least_loaded_with_ring_order_ties() -> None:
    policy = make_policy(["a", "b", "c"])
    short = policy.select(make_request(3), {"a": 2, "b": 0, "c": 1})
    assert (short.replica_id, short.outcome, short.total_blocks) == ("b", Outcome.NO_KEY, 0)
    none = policy.select(RouteRequest(), {})
    assert none.outcome is Outcome.NO_KEY
    assert none.replica_id == ring_of("a", "b", "c").owner(0)


def test_min_owner_match_blocks() -> None:
    policy = make_policy(["a", "b", "c", "d", "e"], min_owner_match_blocks=3)
    policy.select(make_request(8, start=5000), {})  # learn 2 blocks somewhere
    decision = policy.select(make_request(tokens=[*range(5000, 5008), 0, 0, 0, 0]), {})
    assert decision.outcome is Outcome.RING_HOME  # a 2-block match is not enough


def test_kv_events_make_an_owner_and_removals_undo_it() -> None:
    policy = make_policy(["a", "b", "c"])
    request = make_request(16)
    hashes = policy.block_hashes(request)
    home = ring_of("a", "b", "c").owner(hashes[0])
    engine = ({"a", "b", "c"} - {home}).pop()
    policy.on_kv_events(engine, make_batch(make_stored(hashes)))
    hit = policy.select(request, {})
    assert (hit.replica_id, hit.outcome, hit.matched_blocks) == (engine, Outcome.OWNER_HIT, 4)
    policy.on_kv_events(engine, make_batch(make_removed(hashes)))
    policy.on_replica_removed(engine)
    assert policy.select(request, {}).replica_id == home


def test_learned_ownership_expires() -> None:
    clock = FakeClock()
    policy = make_policy(["a", "b", "c"], clock=clock, ownership_ttl_s=30.0)
    order = policy.select(make_request(16), {}).ranked
    policy.select(make_request(16), {order[0]: 3, order[1]: 1})  # spill: order[1] learns
    clock.advance(29)
    assert policy.select(make_request(16), {}).outcome is Outcome.OWNER_HIT  # refreshes order[0]
    clock.advance(29)  # order[1]'s ownership is now 58 s old, order[0]'s 29 s
    spare = {order[0]: 3, order[1]: 0}  # the only live owner is full: back to the ring
    assert policy.select(make_request(16), spare).outcome is Outcome.SPILL
    clock.advance(31)  # everything expired
    decision = policy.select(make_request(16), {})
    assert (decision.replica_id, decision.outcome) == (order[0], Outcome.RING_HOME)


def test_removed_replicas_lose_ownership_and_never_get_picked() -> None:
    policy = make_policy(["a", "b", "c"])
    home = policy.select(make_request(16), {}).replica_id
    policy.set_replicas({"a", "b", "c"} - {home})
    decision = policy.select(make_request(16), {})
    assert decision.outcome is Outcome.RING_HOME and home not in decision.ranked
    policy.set_replicas([])
    with pytest.raises(EmptyRingError):
        policy.select(make_request(16), {})


def test_failover_walks_the_ranked_list() -> None:
    decision = make_policy(["a", "b", "c"]).select(make_request(16), {})
    second = decision.failover({decision.replica_id})
    assert (second.replica_id, second.outcome, second.ranked) == (
        decision.ranked[1],
        Outcome.FAILOVER,
        decision.ranked[1:],
    )
    assert second.failover(set(decision.ranked[:2])).replica_id == decision.ranked[2]
    with pytest.raises(EmptyRingError):
        decision.failover(set(decision.ranked))


@pytest.mark.parametrize(
    "bad",
    [
        {"block_size": 0},
        {"load_epsilon": -0.1},
        {"load_epsilon": float("nan")},
        {"load_floor": -1},
        {"virtual_nodes": 0},
        {"max_index_blocks": 0},
        {"ownership_ttl_s": 0.0},
        {"ownership_ttl_s": float("inf")},
        {"ownership_refresh_s": -1.0},
        {"ownership_refresh_s": 600.0},
        {"ownership_refresh_s": float("nan")},
        {"min_owner_match_blocks": 0},
    ],
)
def test_config_is_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PolicyConfig(**bad)  # type: ignore[arg-type]


def test_config_is_frozen_keyword_only_and_documented_defaults() -> None:
    config = PolicyConfig()
    assert (config.block_size, config.load_epsilon, config.virtual_nodes) == (16, 0.25, 160)
    assert config.load_floor == 4
    assert config.hash_seed == "vllm-none-hash"
    with pytest.raises(TypeError):
        PolicyConfig(16)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        PolicyConfig(hash_seed=5)  # type: ignore[arg-type]


def test_request_requires_lora_name_and_path_together() -> None:
    with pytest.raises(ValueError):
        RouteRequest(token_ids=(1,), lora_name="x")


def test_outcome_labels_are_lowercase_strings() -> None:
    assert [str(o) for o in Outcome] == [
        "owner_hit",
        "ring_home",
        "ring_balance",
        "spill",
        "session",
        "failover",
        "no_key",
    ]
    assert Outcome("spill") is Outcome.SPILL and isinstance(Outcome.SPILL, str)


# A request stream over shared prefixes: (prefix id, suffix length, session, loads).
streams = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=0, max_value=9),
        st.one_of(st.none(), st.sampled_from(["s1", "s2"])),
        st.dictionaries(st.sampled_from(make_replica_ids(4)), st.integers(0, 6), max_size=4),
    ),
    min_size=1,
    max_size=25,
)


def _stream_request(prefix: int, suffix: int, session: str | None) -> RouteRequest:
    return make_request(
        tokens=[*range(prefix * 100, prefix * 100 + 8), *range(suffix)], session_id=session
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(stream=streams)
def test_independent_instances_agree_on_every_decision(
    stream: list[tuple[int, int, str | None, dict[str, int]]],
) -> None:
    first = make_policy(make_replica_ids(4))
    second = make_policy(reversed(make_replica_ids(4)))
    for prefix, suffix, session, in_flight in stream:
        request = _stream_request(prefix, suffix, session)
        decision = first.select(request, in_flight)
        assert decision == second.select(request, in_flight)
        # And the ceiling holds: some replica always has room.
        total = sum(in_flight.get(r, 0) for r in make_replica_ids(4))
        assert in_flight.get(decision.replica_id, 0) < -(-(1.25 * (total + 1)) // 4)


_DECISIONS_SCRIPT = """
import json
from router import CacheAwarePolicy, PolicyConfig, RouteRequest
policy = CacheAwarePolicy(PolicyConfig(block_size=4), replicas=[f"r{i}" for i in range(5)])
out = []
for i in range(60):
    tokens = tuple(range((i % 7) * 50, (i % 7) * 50 + 4 + i % 13))
    session = f"s{i % 3}" if i % 4 == 0 else None
    d = policy.select(RouteRequest(token_ids=tokens, session_id=session), {f"r{i % 5}": i % 3})
    out.append([d.replica_id, str(d.outcome), d.matched_blocks, list(d.ranked)])
print(json.dumps(out))
"""


def test_processes_with_different_pythonhashseed_decide_identically() -> None:
    outputs = []
    for seed in ("0", "1", "4242", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", _DECISIONS_SCRIPT],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(json.loads(result.stdout))
    assert all(output == outputs[0] for output in outputs)
    assert {row[1] for row in outputs[0]} >= {"ring_home", "owner_hit", "session"}


def test_placement_reads_without_learning() -> None:
    from router import Placement

    policy = make_policy(["a", "b", "c"])
    request = make_request(16)
    home = ring_of("a", "b", "c").owner(policy.block_hashes(request)[0])
    nobody = Placement(holders=frozenset(), home=home, total_blocks=4)
    assert policy.placement(request) == nobody
    assert policy.placement(request) == nobody  # asking did not make anyone an owner
    assert policy.placement(make_request(3)) is None  # no full block


def test_placement_needs_every_block_and_prefers_holders_in_ring_order() -> None:
    policy = make_policy(["a", "b", "c"])
    request = make_request(16)
    hashes = policy.block_hashes(request)
    order = list(ring_of("a", "b", "c").walk(hashes[0]))
    policy.on_kv_events(order[2], make_batch(make_stored(hashes[:3])))
    assert policy.placement(request).holders == frozenset()  # 3 of 4 blocks is not the prefix
    policy.on_kv_events(order[2], make_batch(make_stored(hashes)))
    policy.on_kv_events(order[1], make_batch(make_stored(hashes)))
    placement = policy.placement(request)
    assert (placement.holders, placement.home) == (frozenset(order[1:]), order[1])
    # It is where the next request goes at zero load.
    assert policy.select(request, {}).replica_id == placement.home
    policy.set_replicas([])
    assert policy.placement(request) is None


def test_forget_prefix_sends_the_next_request_to_the_ring_home() -> None:
    policy = make_policy(["a", "b", "c"])
    request = make_request(16)
    hashes = policy.block_hashes(request)
    home = ring_of("a", "b", "c").owner(hashes[0])
    other = ({"a", "b", "c"} - {home}).pop()
    policy.on_kv_events(other, make_batch(make_stored(hashes)))
    assert policy.select(request, {}).replica_id == other
    assert policy.forget_prefix(request) == 4
    decision = policy.select(request, {})
    assert (decision.replica_id, decision.outcome) == (home, Outcome.RING_HOME)


def test_a_decision_is_the_frozen_dataclass_its_fields_make() -> None:
    import dataclasses

    decision = make_policy().select(make_request(16), {})
    fields = {f.name: getattr(decision, f.name) for f in dataclasses.fields(Decision)}
    assert decision == Decision(**fields) and repr(decision) == repr(Decision(**fields))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.replica_id = "elsewhere"  # type: ignore[misc]
    assert dataclasses.replace(decision, matched_blocks=0).matched_blocks == 0


def test_the_refresh_interval_reaches_the_ownership_index() -> None:
    # A tenth of the TTL by default; 0 writes every block of every learned chain.
    assert make_policy(ownership_ttl_s=30.0)._index._max_refresh_s == 3.0
    assert make_policy(ownership_refresh_s=0.0)._index._max_refresh_s == 0.0
