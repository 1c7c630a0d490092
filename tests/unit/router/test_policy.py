"""CacheAwarePolicy: what a decision records (and a held spill only once committed),
KV events, expiry, membership's effect on ownership, reads that learn nothing, the
config, determinism across instances and processes, and the protocols it serves."""

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
    make_policy,
    make_removed,
    make_replica_ids,
    make_request,
    make_stored,
    ring_of,
)

from router import (
    AdmissionPolicy,
    Decision,
    EmptyRingError,
    FleetEvents,
    Outcome,
    PolicyConfig,
    PrefixReads,
    RouteRequest,
    RoutingPolicy,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


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


def test_the_policy_serves_every_protocol_an_adapter_types_it_by() -> None:
    policy = make_policy()
    for protocol in (RoutingPolicy, AdmissionPolicy, FleetEvents, PrefixReads):
        assert isinstance(policy, protocol), protocol.__name__
