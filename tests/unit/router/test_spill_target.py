"""CacheAwarePolicy.spill_target: where the next request of a prefix would spill,
predicted exactly, so the prefix can be replicated there before it does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import make_policy, make_request

from router import Outcome, RouteRequest


def _asking(question: int) -> RouteRequest:
    """A tenant's request: its 16-token (4-block) system prompt, then its own question."""
    return make_request(tokens=[*make_request(16).token_ids, *range(question, question + 5)])


def _home_and_other() -> tuple[str, str]:
    home = make_policy(["a", "b"]).select(make_request(16), {}).replica_id
    return home, ({"a", "b"} - {home}).pop()


def test_an_owner_that_keeps_room_needs_no_replica() -> None:
    home, other = _home_and_other()
    policy = make_policy(["a", "b"])
    policy.select(make_request(16), {})
    decision = policy.select(make_request(20), {home: 0, other: 0})
    assert decision.outcome is Outcome.OWNER_HIT
    # After this request: 1 in flight, capacity ceil(1.25 x 2 / 2) = 2; the home has room.
    assert policy.spill_target(make_request(20), decision, {home: 0, other: 0}) is None


def test_an_owner_this_request_fills_names_the_replica_the_next_spill_goes_to() -> None:
    home, other = _home_and_other()
    policy = make_policy(["a", "b"])
    policy.select(make_request(16), {})
    loads = {home: 1, other: 0}
    decision = policy.select(make_request(20), loads)
    assert (decision.replica_id, decision.outcome, decision.matched_blocks) == (
        home, Outcome.OWNER_HIT, 4)
    # Counting it, the home holds 2 of 2 in flight: capacity ceil(1.25 x 3 / 2) = 2.
    assert policy.spill_target(make_request(20), decision, loads) == (other, 4)
    # What it predicts is what happens: the next request spills there, a miss...
    after = {home: 2, other: 0}
    assert policy.select(make_request(24), after).replica_id == other


def test_a_replicated_prefix_turns_the_spill_into_an_owner_hit() -> None:
    home, other = _home_and_other()
    policy = make_policy(["a", "b"])
    policy.select(_asking(1), {})
    decision = policy.select(_asking(2), {home: 1, other: 0})
    assert policy.spill_target(_asking(2), decision, {home: 1, other: 0}) == (other, 4)
    # The replication: the prefix's 4 blocks prefilled on the target.
    policy.learn(other, make_request(16))
    spilled = policy.select(_asking(3), {home: 2, other: 0})
    assert (spilled.replica_id, spilled.outcome, spilled.matched_blocks) == (
        other, Outcome.OWNER_HIT, 4)
    # Now both own it: no further target while either has room.
    again = policy.select(_asking(4), {home: 2, other: 0})
    assert policy.spill_target(_asking(4), again, {home: 2, other: 0}) is None


def test_only_owner_hits_are_replicated() -> None:
    policy = make_policy(["a", "b"])
    first = policy.select(make_request(16), {})
    assert first.outcome is Outcome.RING_HOME
    assert policy.spill_target(make_request(16), first, {first.replica_id: 5}) is None


def test_no_target_while_another_owner_has_room() -> None:
    policy = make_policy(["a", "b", "c"])
    home = policy.select(make_request(16), {}).replica_id
    others = sorted({"a", "b", "c"} - {home})
    policy.learn(others[0], make_request(16))
    loads = {home: 2, others[0]: 0, others[1]: 0}
    decision = policy.select(make_request(16), loads)
    assert (decision.replica_id, decision.outcome) == (others[0], Outcome.OWNER_HIT)
    full_home = {home: 3, others[0]: 0, others[1]: 0}
    # The chosen owner, counting this request, has room.
    assert policy.spill_target(make_request(16), decision, full_home) is None


@settings(max_examples=200, deadline=None)
@given(loads=st.lists(st.integers(0, 6), min_size=4, max_size=4),
       owners=st.sets(st.integers(0, 3), min_size=1, max_size=3))
def test_the_target_is_where_select_sends_the_next_request(
        loads: list[int], owners: set[int]) -> None:
    replicas = ["r0", "r1", "r2", "r3"]
    policy = make_policy(replicas)
    for i in sorted(owners):
        policy.learn(replicas[i], make_request(16))
    in_flight = dict(zip(replicas, loads, strict=True))
    decision = policy.select(make_request(16), in_flight)
    target = policy.spill_target(make_request(16), decision, in_flight)
    after = dict(in_flight)
    after[decision.replica_id] += 1
    if target is None:
        return
    replica, blocks = target
    assert decision.outcome is Outcome.OWNER_HIT and blocks == decision.matched_blocks
    owned = {replicas[i] for i in owners} | {decision.replica_id}
    assert replica not in owned
    nxt = policy.select(make_request(16), after)
    assert (nxt.replica_id, nxt.outcome) == (replica, Outcome.SPILL)
