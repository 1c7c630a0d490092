"""keys_moved_fraction on the router's ring."""

from __future__ import annotations

import pytest

from chaos.ring_churn import keys_moved_fraction, moved_bound, sample_keys
from router.ring import HashRing

KEYS = sample_keys(5_000)


def test_same_membership_moves_nothing() -> None:
    assert keys_moved_fraction(["a", "b", "c"], ["c", "b", "a"], keys=KEYS) == 0.0


def test_removal_moves_exactly_the_removed_replicas_keys() -> None:
    before = ["r0", "r1", "r2", "r3"]
    ring = HashRing(before)
    share = sum(1 for k in KEYS if ring.owner(k) == "r2") / len(KEYS)
    moved = keys_moved_fraction(before, ["r0", "r1", "r3"], keys=KEYS)
    assert moved == pytest.approx(share)
    assert moved <= moved_bound(len(before))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_addition_moves_about_one_over_n_plus_one(n: int) -> None:
    before = [f"r{i}" for i in range(n)]
    moved = keys_moved_fraction(before, [*before, "new"], keys=KEYS)
    assert moved is not None
    assert moved == pytest.approx(1 / (n + 1), abs=0.1 / (n + 1) + 0.02)


def test_replacement_with_a_new_id_moves_more_than_one_share() -> None:
    moved = keys_moved_fraction(["a", "b"], ["a", "b2"], keys=KEYS)
    assert moved is not None and moved > moved_bound(2)


def test_empty_side_gives_none() -> None:
    assert keys_moved_fraction([], ["a"], keys=KEYS) is None
    assert keys_moved_fraction(["a"], [], keys=KEYS) is None
    assert keys_moved_fraction(["a"], ["a"], keys=[]) is None


def test_bound_is_eleven_tenths_over_n() -> None:
    assert moved_bound(2) == pytest.approx(0.55)
    assert moved_bound(4) == pytest.approx(0.275)


def test_peak_keys_moved_sees_the_outage_not_just_the_ends() -> None:
    from chaos.ring_churn import peak_keys_moved

    before = ["rank-0", "rank-1", "rank-2"]
    outage = ["rank-0", "rank-2"]
    keys = sample_keys(4000)
    # Replaced on the same seat: the ends agree, the outage moved one share.
    peak = peak_keys_moved(before, [before, outage, [], before], keys=keys)
    assert peak == keys_moved_fraction(before, outage, keys=keys)
    assert 0.2 < peak < 0.45
    assert peak_keys_moved(before, [before], keys=keys) == 0.0
    assert peak_keys_moved(before, [[]], keys=keys) is None
