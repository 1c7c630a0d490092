"""Bounded loads: the capacity formula, the walk, and the ceiling as a property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import make_replica_ids

from router.load import (
    InFlightCounts,
    LoadChoice,
    choose_bounded,
    load_capacity,
    total_in_flight,
)
from router.ring import HashRing


@pytest.mark.parametrize(
    ("total", "replicas", "epsilon", "expected"),
    [
        (0, 4, 0.25, 1),  # ceil(1.25 * 1 / 4)
        (7, 2, 0.25, 5),  # ceil(1.25 * 8 / 2) = 5 exactly
        (10, 4, 0.25, 4),  # ceil(3.4375)
        (10, 4, 0.0, 3),  # ceil(2.75)
        (99, 10, 1.0, 20),
    ],
)
def test_capacity_formula(total: int, replicas: int, epsilon: float, expected: int) -> None:
    assert load_capacity(total, replicas, epsilon) == expected


@pytest.mark.parametrize(
    ("total", "replicas", "floor", "expected"),
    [
        (3, 4, 2, 2),  # ceil(1.25 * 4 / 4) = 2 anyway
        (1, 4, 3, 3),  # the bound alone says 1: the floor lifts it
        (99, 10, 3, 13),  # far above the floor the bound alone decides
        (0, 1, 0, 2),  # floor 0 is the bound alone: ceil(1.25 * 1 / 1)
    ],
)
def test_capacity_never_falls_below_the_floor(total: int, replicas: int, floor: int,
                                              expected: int) -> None:
    assert load_capacity(total, replicas, 0.25, floor) == expected


def test_capacity_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        load_capacity(0, 0, 0.25)
    with pytest.raises(ValueError):
        load_capacity(-1, 2, 0.25)


def test_total_ignores_unknown_replicas_and_rejects_negatives() -> None:
    assert total_in_flight({"a": 2, "b": 3, "gone": 50}, {"a", "b", "c"}) == 5
    with pytest.raises(ValueError):
        total_in_flight({"a": -1}, {"a"})


def test_choose_bounded_stops_at_first_with_room() -> None:
    order = ["home", "next", "last"]
    assert choose_bounded(order, {"home": 1}, 2) == LoadChoice("home", False, 2)
    assert choose_bounded(order, {"home": 2, "next": 5}, 2) == LoadChoice("last", True, 2)
    assert choose_bounded(order, {"home": 2, "next": 2, "last": 2}, 2) is None


loads = st.dictionaries(
    st.sampled_from(make_replica_ids(6)), st.integers(min_value=0, max_value=50), max_size=6
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    in_flight=loads,
    key=st.integers(min_value=0, max_value=2**64 - 1),
    epsilon=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    floor=st.sampled_from([0, 0, 2, 4]),
)
def test_ceiling_holds_and_a_full_walk_always_finds_room(
    in_flight: dict[str, int], key: int, epsilon: float, floor: int
) -> None:
    replicas = make_replica_ids(6)
    ring = HashRing(replicas)
    capacity = load_capacity(total_in_flight(in_flight, replicas), len(replicas), epsilon,
                             floor)
    choice = choose_bounded(ring.walk(key), in_flight, capacity)
    assert choice is not None
    assert in_flight.get(choice.replica_id, 0) < capacity
    # Everyone the walk passed over before the choice was full.
    order = list(ring.walk(key))
    for skipped in order[: order.index(choice.replica_id)]:
        assert in_flight.get(skipped, 0) >= capacity


def test_hot_key_overflow_concentrates_on_the_next_replicas_along_the_ring() -> None:
    replicas = make_replica_ids(8)
    ring = HashRing(replicas)
    key = 123456789
    order = list(ring.walk(key))
    in_flight = dict.fromkeys(replicas, 10)  # background load everywhere
    chosen = []
    for _ in range(8):  # a burst for one key, nothing finishes
        capacity = load_capacity(total_in_flight(in_flight, replicas), 8, 0.25)
        choice = choose_bounded(ring.walk(key), in_flight, capacity)
        assert choice is not None
        in_flight[choice.replica_id] += 1
        chosen.append(choice.replica_id)
    # Capacity grows from ceil(1.25 * 81 / 8) = 13 to 14 as the burst adds
    # load: the home fills up to 14, then the overflow goes to the home's ring
    # successor, not to random (or least loaded) replicas.
    assert chosen == [order[0]] * 4 + [order[1]] * 4
    assert in_flight[order[0]] == 14


def test_in_flight_counts_keep_their_total_and_change_only_through_add() -> None:
    replicas = frozenset(make_replica_ids(3))
    counts = InFlightCounts(replicas)
    counts.add("replica-0", 2)
    counts.add("replica-2", 1)
    counts.add("elsewhere", 4)  # not one of the replicas: not in the total
    assert counts.total == 3 and counts["replica-0"] == 2 and counts.get("replica-1") == 0
    assert total_in_flight(counts, replicas) == 3  # read in O(1): the same replica set
    assert total_in_flight(counts, frozenset(make_replica_ids(2))) == 2  # summed
    counts.add("replica-0", -2)
    assert counts.total == 1
    with pytest.raises(ValueError):
        counts.add("replica-1", -1)
    with pytest.raises(TypeError):
        counts["replica-1"] = 5
    with pytest.raises(TypeError):
        counts.update({"replica-1": 5})


def test_in_flight_total_is_read_for_an_equal_copy_of_its_replica_set() -> None:
    # One policy per ingress, each with its own frozenset of the same fleet.
    replicas = frozenset(make_replica_ids(4))
    counts = InFlightCounts(replicas)
    counts.add("replica-1", 3)
    counts.add("elsewhere", 5)
    copy = frozenset(make_replica_ids(4))
    assert copy is not replicas
    assert counts.covers(copy)
    assert counts._compared[id(copy)] == (copy, True)  # compared once, then remembered
    counts._compared[id(copy)] = (copy, False)  # so the next answer is the memory's
    assert not counts.covers(copy)
    counts._compared[id(copy)] = (copy, True)
    assert total_in_flight(counts, copy) == 3
    assert not counts.covers(frozenset(make_replica_ids(3)))
    assert total_in_flight(counts, frozenset(make_replica_ids(3))) == 3  # summed
    assert total_in_flight(counts, frozenset(make_replica_ids(5))) == 3  # summed
    # A mutable set could change after a comparison: always summed, never remembered.
    mutable = set(make_replica_ids(4))
    assert not counts.covers(mutable)
    mutable.discard("replica-1")
    assert total_in_flight(counts, mutable) == 0
    # The memory of compared sets stays bounded.
    for size in range(200):
        counts.covers(frozenset(make_replica_ids(size)))
    assert len(counts._compared) <= InFlightCounts.COMPARED_SETS
    assert counts.covers(copy)
