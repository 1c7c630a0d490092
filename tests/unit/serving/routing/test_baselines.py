"""The `random` baseline router: a ranking of every candidate, once each."""

from __future__ import annotations

import random
from collections import Counter

from serving.routing.baselines import random_ranks


def test_random_ranking_covers_every_replica_once() -> None:
    replicas = [f"r{i}" for i in range(5)]
    ranks = random_ranks(replicas, random.Random(0))  # type: ignore[arg-type]
    assert all(len(rank) == 1 for rank in ranks)
    assert sorted(r for rank in ranks for r in rank) == replicas


def test_random_ranking_is_uniform_over_first_choices() -> None:
    rng = random.Random(1)
    firsts = Counter(random_ranks(["a", "b", "c"], rng)[0][0]  # type: ignore[arg-type]
                     for _ in range(3000))
    # Each replica first about 1,000 times; 850 is > 5 standard deviations (25.8) away.
    assert set(firsts) == {"a", "b", "c"} and min(firsts.values()) > 850


def test_no_candidates_no_ranks() -> None:
    assert random_ranks([], random.Random(0)) == []
