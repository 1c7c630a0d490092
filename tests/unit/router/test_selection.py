"""Selection (router/selection.py) through the policy: the exact decision on every
path (owner hit, ring home, spill, balance, session, no key, failover) and the load
bound and floor that shape it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import make_policy, make_replica_ids, make_request, ring_of

from router import Decision, EmptyRingError, Outcome, RouteRequest
from router.ring import stable_key


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
