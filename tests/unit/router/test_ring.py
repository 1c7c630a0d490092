"""HashRing: determinism and the consistent-hashing movement properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import make_replica_ids

from router.ring import EmptyRingError, HashRing, stable_key

replica_names = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12),
    min_size=2,
    max_size=10,
    unique=True,
)


def make_keys(count: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


def test_stable_key_is_fixed_across_processes_and_versions() -> None:
    assert stable_key("session-1") == 12558777036138866604


def test_owner_is_first_of_walk_and_walk_is_a_permutation() -> None:
    ring = HashRing(make_replica_ids(5))
    for key in make_keys(200):
        order = list(ring.walk(key))
        assert order[0] == ring.owner(key)
        assert sorted(order) == sorted(make_replica_ids(5))


def test_membership_order_does_not_matter() -> None:
    ids = make_replica_ids(6)
    forward, backward = HashRing(ids), HashRing(reversed(ids))
    incremental = HashRing()
    for replica in ids:
        incremental.add(replica)
    for key in make_keys(500):
        assert forward.owner(key) == backward.owner(key) == incremental.owner(key)
        assert list(forward.walk(key)) == list(backward.walk(key))


def test_empty_ring_raises() -> None:
    ring = HashRing()
    with pytest.raises(EmptyRingError):
        ring.owner(1)
    with pytest.raises(EmptyRingError):
        next(ring.walk(1))


def test_keys_at_the_wrap_around_belong_to_the_first_point() -> None:
    ring = HashRing(make_replica_ids(5), virtual_nodes=3)
    # Past the last point the search wraps to index 0, where key 0 also lands.
    assert ring.owner(2**64 - 1) == ring.owner(0)
    assert list(ring.walk(2**64 - 1)) == list(ring.walk(0))


def test_add_remove_set_and_membership() -> None:
    ring = HashRing(["a", "b"], virtual_nodes=8)
    ring.add("c")
    ring.remove("a")
    ring.remove("absent")
    assert ring.replicas == {"b", "c"} and len(ring) == 2 and "b" in ring
    ring.set_replicas(["x"])
    assert ring.replicas == {"x"}
    with pytest.raises(ValueError):
        HashRing(virtual_nodes=0)


def test_each_replica_gets_about_its_share() -> None:
    ring = HashRing(make_replica_ids(8))
    keys = make_keys(40_000)
    counts: dict[str, int] = {}
    for key in keys:
        counts[ring.owner(key)] = counts.get(ring.owner(key), 0) + 1
    # 160 virtual nodes: relative spread about 1/sqrt(160) = 8%; allow 30%.
    assert all(abs(c / len(keys) - 1 / 8) < 0.3 / 8 for c in counts.values())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(names=replica_names, data=st.data())
def test_removing_a_replica_moves_only_its_keys(names: list[str], data: st.DataObject) -> None:
    removed = data.draw(st.sampled_from(names))
    before = HashRing(names)
    after = HashRing(names)
    after.remove(removed)
    for key in make_keys(2_000):
        if before.owner(key) != removed:
            assert after.owner(key) == before.owner(key)
        else:
            # It goes to the next distinct replica along the ring.
            assert after.owner(key) == list(before.walk(key))[1]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(names=replica_names, newcomer=st.text(alphabet="ABCDEF", min_size=1, max_size=6))
def test_adding_a_replica_moves_about_one_nth_of_keys(names: list[str], newcomer: str) -> None:
    before = HashRing(names)
    after = HashRing([*names, newcomer])
    keys = make_keys(10_000)
    moved = [key for key in keys if before.owner(key) != after.owner(key)]
    # Every moved key moved to the newcomer, never between old replicas.
    assert all(after.owner(key) == newcomer for key in moved)
    expected = len(keys) / (len(names) + 1)
    # The newcomer's share has about 8% relative spread (160 points); the bound
    # below is over 5 sigma wide on each side.
    assert 0.55 * expected < len(moved) < 1.6 * expected


@settings(max_examples=40, deadline=None, derandomize=True)
@given(names=replica_names, data=st.data())
def test_ring_order_helpers_agree_with_the_walk(names: list[str], data: st.DataObject) -> None:
    ring = HashRing(names)
    subset = data.draw(st.lists(st.sampled_from(names), unique=True))
    for key in make_keys(50):
        walk = list(ring.walk(key))
        expected = [r for r in walk if r in subset]
        assert ring.in_ring_order([*subset, "not-on-the-ring"], key) == expected
        assert ring.first_in_ring_order(subset, key) == (expected[0] if expected else None)
        first = data.draw(st.sampled_from(names))
        assert ring.order(key, first=first) == (first, *(r for r in walk if r != first))
        assert ring.order(key) == tuple(walk)


def test_first_in_ring_order_steps_along_the_points_for_many_replicas() -> None:
    ring = HashRing(make_replica_ids(200))
    many = make_replica_ids(200)[::3]  # 67 of 200: k * k * 8 > N, the stepping branch
    for key in make_keys(100):
        assert ring.first_in_ring_order(many, key) == next(
            r for r in ring.walk(key) if r in set(many))


# --- stable seats ---------------------------------------------------------------

def test_a_replacement_on_its_predecessors_seat_takes_exactly_its_arcs() -> None:
    from router.ring import rank_seat, stable_key

    keys = [stable_key(f"key-{i}") for i in range(5000)]
    before = HashRing(["a", "b", "c"], virtual_nodes=64)
    before.set_replicas(["a", "b", "c"], {"a": rank_seat(0), "b": rank_seat(1), "c": rank_seat(2)})
    after = HashRing(virtual_nodes=64)
    after.set_replicas(["a", "b2", "c"], {"a": rank_seat(0), "b2": rank_seat(1), "c": rank_seat(2)})
    renamed = {"b": "b2"}
    assert all(renamed.get(before.owner(k), before.owner(k)) == after.owner(k) for k in keys)
    assert after.seat("b2") == "rank-1" and after.seat("a") == "rank-0"


def test_without_a_seat_a_replacement_moves_keys_of_every_replica() -> None:
    # The reason for seats: a new id lands on new arcs, taking keys from survivors too.
    from router.ring import stable_key

    keys = [stable_key(f"key-{i}") for i in range(5000)]
    before = HashRing(["a", "b", "c"], virtual_nodes=64)
    after = HashRing(["a", "b2", "c"], virtual_nodes=64)
    survivors_moved = sum(1 for k in keys if before.owner(k) in ("a", "c")
                          and before.owner(k) != after.owner(k))
    assert survivors_moved > 0


def test_seats_of_departed_replicas_are_dropped_and_unseated_ids_sit_at_their_id() -> None:
    from router.ring import rank_seat

    plain = HashRing(["x", "y"], virtual_nodes=16)
    seated = HashRing(virtual_nodes=16)
    seated.set_replicas(["x", "y"], {"x": "x", "gone": rank_seat(3)})
    assert seated.seat("gone") == "gone"
    assert [seated.owner(k) for k in range(0, 2**64, 2**58)] == \
        [plain.owner(k) for k in range(0, 2**64, 2**58)]


def test_ring_distance_memo_is_bounded_and_follows_membership(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import router.ring as ring_module

    monkeypatch.setattr(ring_module, "_MEMO_MAX_DISTANCES", 20)
    monkeypatch.setattr(ring_module, "_MEMO_MAX_KEYS", 3)
    names = make_replica_ids(200)
    ring = HashRing(names)
    for key in make_keys(50):
        subset = names[key % 190:key % 190 + 5]  # 5 * 5 * 2 <= 200: the memoised branch
        assert ring.first_in_ring_order(subset, key) == next(
            r for r in ring.walk(key) if r in subset)
        assert ring._memo_size <= 20 and len(ring._distances) <= 3  # type: ignore[attr-defined]
        held = sum(map(len, ring._distances.values()))  # type: ignore[attr-defined]
        assert ring._memo_size == held  # type: ignore[attr-defined]
    key = make_keys(1)[0]
    first = ring.first_in_ring_order(names[:5], key)
    ring.remove(first)  # the memo must not answer with the old points
    assert ring.first_in_ring_order(names[:5], key) == next(
        r for r in ring.walk(key) if r in names[:5])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(names=replica_names, data=st.data())
def test_first_with_room_is_the_bounded_walk(names: list[str], data: st.DataObject) -> None:
    from router.load import choose_bounded

    ring = HashRing(names)
    loads = {name: data.draw(st.integers(0, 4)) for name in names}
    for key in make_keys(20):
        capacity = data.draw(st.integers(0, 5))
        choice = choose_bounded(ring.walk(key), loads, capacity)
        expected = None if choice is None else (choice.replica_id, choice.spilled)
        assert ring.first_with_room(key, loads, capacity) == expected
    with pytest.raises(EmptyRingError):
        HashRing([]).first_with_room(1, {}, 1)
