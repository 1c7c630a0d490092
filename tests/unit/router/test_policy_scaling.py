"""The decision path that does not grow with the replica count decides as the plain one.

``CacheAwarePolicy`` orders only a prefix's owners along the ring, walks the ring
lazily and reads an ``InFlightCounts`` total in O(1). ``_reference_decide`` below
is the straightforward algorithm the policy module describes (walk the whole
ring, filter it), kept here as the executable specification; every decision
must agree with it, including the full ``ranked`` list.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import FakeClock, make_policy, make_replica_ids, make_request

import router.selection
from router import CacheAwarePolicy, Outcome, RouteRequest
from router.load import InFlightCounts, choose_bounded, load_capacity
from router.ring import stable_key

REPLICAS = make_replica_ids(12)


def _reference_decide(policy: CacheAwarePolicy, request: RouteRequest,
                      in_flight: Mapping[str, int]) -> tuple[str, Outcome, int, tuple[str, ...]]:
    """The O(N) algorithm: a full ring walk, filtered. Reads the policy's state, changes none."""
    hashes = policy.block_hashes(request)
    replicas = policy.replicas
    total = sum(in_flight.get(r, 0) for r in replicas)
    capacity = load_capacity(total, len(replicas), policy.config.load_epsilon)
    session_key = (stable_key(request.session_id)
                   if policy.config.session_affinity and request.session_id is not None else None)
    ring = policy._ring  # the specification reads the same ring
    key = session_key if session_key is not None else (hashes[0] if hashes else None)
    assert key is not None
    order = tuple(ring.walk(key))
    match = policy._index.longest_prefix(hashes)
    if match.matched_blocks >= policy.config.min_owner_match_blocks:
        with_room = [r for r in order if r in match.owners and in_flight.get(r, 0) < capacity]
        if with_room:
            chosen = min(with_room, key=lambda r: in_flight.get(r, 0))
            return chosen, Outcome.OWNER_HIT, match.matched_blocks, (
                chosen, *(r for r in order if r != chosen))
    if match.matched_blocks == 0 and session_key is None:
        # A prefix nobody holds: the first replica along the ring at or below the mean.
        at_mean = load_capacity(total, len(replicas), 0.0)
        chosen = next(r for r in order if in_flight.get(r, 0) < at_mean)
        return chosen, (Outcome.RING_HOME if chosen == order[0] else Outcome.RING_BALANCE), 0, (
            chosen, *(r for r in order if r != chosen))
    choice = choose_bounded(order, in_flight, capacity)
    assert choice is not None
    # Away from owners that were all full (some on the ring) is a spill too.
    diverted = (match.matched_blocks >= policy.config.min_owner_match_blocks
                and choice.replica_id not in match.owners
                and any(r in replicas for r in match.owners))
    outcome = (Outcome.SPILL if choice.spilled or diverted
               else Outcome.SESSION if session_key is not None else Outcome.RING_HOME)
    matched = match.matched_blocks if choice.replica_id in match.owners else 0
    return choice.replica_id, outcome, matched, (
        choice.replica_id, *(r for r in order if r != choice.replica_id))


requests_with_loads = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),  # shared prefix id (hot prefixes: many owners)
        st.integers(min_value=4, max_value=12),  # tokens after it
        st.one_of(st.none(), st.sampled_from(["s1", "s2"])),
        st.lists(st.integers(0, 3), min_size=len(REPLICAS), max_size=len(REPLICAS)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(stream=requests_with_loads)
def test_every_decision_matches_the_full_walk(
        stream: list[tuple[int, int, str | None, list[int]]]) -> None:
    policy = make_policy(REPLICAS, clock=FakeClock())
    hashed_twin = make_policy(REPLICAS, clock=FakeClock())
    for number, (prefix, suffix, session, loads) in enumerate(stream):
        request = make_request(tokens=[*range(prefix * 100, prefix * 100 + 8),
                                       *range(10_000 + number * 50, 10_000 + number * 50 + suffix)],
                               session_id=session)
        in_flight = InFlightCounts(policy.replicas)
        for replica, load in zip(REPLICAS, loads):
            in_flight.add(replica, load)
        expected = _reference_decide(policy, request, dict(in_flight))
        decision = policy.select(request, in_flight)
        assert (decision.replica_id, decision.outcome, decision.matched_blocks,
                tuple(decision.ranked)) == expected
        # The precomputed-hash entry point decides identically.
        twin = hashed_twin.select_hashed(request, hashed_twin.block_hashes(request), dict(in_flight))
        assert twin == decision


def test_owners_that_left_the_ring_are_skipped() -> None:
    policy = make_policy(["a", "b", "c"])
    request = make_request(16)
    home = policy.select(request, {}).replica_id
    others = sorted({"a", "b", "c"} - {home})
    policy.select(request, {home: 5, others[0]: 0, others[1]: 5})  # a spill: a second owner
    policy.set_replicas({"a", "b", "c", "d"} - {home})
    decision = policy.select(request, {})
    assert decision.replica_id in others and decision.outcome is Outcome.OWNER_HIT


def test_ranked_reads_as_a_tuple_and_is_built_lazily() -> None:
    policy = make_policy(make_replica_ids(50))
    decision = policy.select(make_request(16), {})
    assert decision.ranked._items is None  # type: ignore[attr-defined]  # nothing walked yet
    assert len(decision.ranked) == 50 and decision.ranked[0] == decision.replica_id
    assert decision.ranked == tuple(decision.ranked) and set(decision.ranked) == set(
        make_replica_ids(50))
    assert hash(decision.ranked) == hash(tuple(decision.ranked))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_hot_prefix_views_decide_as_the_full_walk(seed: int) -> None:
    """Many owners of a hot prefix and counts that change between decisions: the
    cached per-block views (``owner_loads.py``) are used and change no decision."""
    rng = random.Random(seed)
    replicas = make_replica_ids(48)
    clock = FakeClock()
    # No slack: the hot prefixes spill onto many replicas, which then own them. Views
    # from 16 owners, so that 48 replicas put blocks on both sides of the threshold
    # (views, and the ring-ordered owners of OwnerOrder below it).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(router.selection, "_VIEW_MIN_OWNERS", 16)
        policy = make_policy(replicas, clock=clock, load_epsilon=0.0)
        _decide_hot_prefixes(rng, policy, replicas, clock)
    assert len(policy._selection._owner_loads) > 0  # the views were in play
    assert len(policy._selection._owner_order) > 0  # and the ring-ordered owners


def _decide_hot_prefixes(rng: random.Random, policy: CacheAwarePolicy, replicas: list[str],
                         clock: FakeClock) -> None:
    in_flight = InFlightCounts(policy.replicas)
    running: list[str] = []
    for number in range(600):
        prefix = min(int(rng.paretovariate(1.0)) - 1, 5)  # a few hot prefixes
        request = make_request(tokens=[*range(prefix * 100, prefix * 100 + 8),
                                       *range(10_000 + number * 50, 10_000 + number * 50 + 5)],
                               session_id=rng.choice([None, None, None, "s1"]))
        expected = _reference_decide(policy, request, dict(in_flight))
        decision = policy.select(request, in_flight)
        assert (decision.replica_id, decision.outcome, decision.matched_blocks,
                tuple(decision.ranked)) == expected
        in_flight.add(decision.replica_id, 1)
        running.append(decision.replica_id)
        while len(running) > 60 or (running and rng.random() < 0.3):
            in_flight.add(running.pop(rng.randrange(len(running))), -1)
        if rng.random() < 0.02:
            policy.eject(rng.choice(replicas))  # ring changes: orders must follow
        if rng.random() < 0.02:
            policy.readmit(rng.choice(sorted(policy.ejected) or replicas))
        clock.advance(rng.choice([0.0, 0.5, 30.0]))
