"""Eviction: stale first, then lowest relevance x recency under the bounds."""

from __future__ import annotations

import pytest

from serving.documents.eviction import EvictionPolicy, Reason, Usage, score, victims

POLICY = EvictionPolicy(max_documents=3, max_total_tokens=1000, half_life_s=100.0,
                        idle_ttl_s=1000.0)


def use(id: str, *, hits: int = 0, last: float = 0.0, tokens: int = 100) -> Usage:
    return Usage(id=id, tokens=tokens, hits=hits, last_used_s=last)


def test_score_halves_per_half_life_and_grows_with_hits() -> None:
    assert score(use("a", hits=3, last=0), 0, 100) == 4
    assert score(use("a", hits=3, last=0), 100, 100) == pytest.approx(2)
    assert score(use("a", hits=0, last=50), 50, 100) == 1


def test_within_bounds_nothing_goes() -> None:
    assert victims([use("a"), use("b"), use("c")], 10, POLICY) == []


def test_over_the_count_the_lowest_score_goes_first() -> None:
    docs = [use("busy", hits=8, last=0), use("fresh", hits=0, last=290),
            use("old", hits=1, last=100), use("new", hits=0, last=300)]
    # At 300: busy 9/8 = 1.125, fresh ~0.87, old 2/4 = 0.5, new 1.
    assert victims(docs, 300, POLICY, keep="new") == [("old", Reason.LIMIT)]


def test_recency_beats_stale_popularity() -> None:
    docs = [use("yesterday", hits=50, last=0), use("a", last=990), use("b", last=995),
            use("c", last=999)]
    assert victims(docs, 1000, POLICY) == [("yesterday", Reason.IDLE)]
    docs[0] = use("yesterday", hits=50, last=200)  # not stale, but 8 half-lives idle
    assert victims(docs, 1000, POLICY) == [("yesterday", Reason.LIMIT)]


def test_token_bound_evicts_until_it_fits_and_never_the_kept_one() -> None:
    docs = [use("a", tokens=400, last=10), use("b", tokens=400, last=20),
            use("big", tokens=900, last=0)]
    assert victims(docs, 30, POLICY, keep="big") == [("a", Reason.LIMIT), ("b", Reason.LIMIT)]


def test_ties_go_to_the_least_recent_then_the_smaller_id() -> None:
    policy = EvictionPolicy(max_documents=1, max_total_tokens=10**6, half_life_s=1e12,
                            idle_ttl_s=1e12)
    docs = [use("b", last=5), use("a", last=5), use("c", last=6)]
    assert [i for i, _ in victims(docs, 6, policy)] == ["a", "b"]


def test_stale_documents_go_whatever_the_bounds() -> None:
    assert victims([use("a", last=0), use("b", last=500)], 1000, POLICY) == [
        ("a", Reason.IDLE)]
