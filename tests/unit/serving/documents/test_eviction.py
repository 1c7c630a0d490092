"""Eviction: stale first, then lowest relevance x recency under the bounds."""

from __future__ import annotations

import pytest

from serving.documents.eviction import EvictionPolicy, Quota, Reason, Usage, score, victims

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


def owned(id: str, owner: str, *, hits: int = 0, last: float = 0.0,
          tokens: int = 100) -> Usage:
    return Usage(id=id, tokens=tokens, hits=hits, last_used_s=last, owner=owner)


def test_an_owner_over_its_quota_loses_its_own_lowest_scoring() -> None:
    # acme's document scores lowest of all, but only globex is over its quota (2).
    docs = [owned("acme", "acme", last=0), owned("g1", "globex", hits=2, last=10),
            owned("g2", "globex", last=20), owned("g3", "globex", last=30)]
    quotas = {"globex": Quota(max_documents=2, max_total_tokens=1000)}
    assert victims(docs, 40, POLICY, keep="g3", quotas=quotas) == [("g2", Reason.LIMIT)]


def test_an_owner_token_quota_counts_only_its_own_tokens() -> None:
    docs = [owned("a", "acme", tokens=300), owned("g1", "globex", tokens=200, last=1),
            owned("g2", "globex", tokens=200, last=2)]
    quotas = {"globex": Quota(max_documents=10, max_total_tokens=300)}
    assert victims(docs, 3, POLICY, keep="g2", quotas=quotas) == [("g1", Reason.LIMIT)]


def test_the_service_bound_evicts_from_the_owner_holding_most() -> None:
    # POLICY: 3 documents. acme holds one (the lowest score of all), globex two plus
    # the upload being admitted: globex's lowest goes, acme's stays.
    docs = [owned("acme", "acme", last=0), owned("g1", "globex", last=10),
            owned("g2", "globex", hits=5, last=20), owned("new", "globex", last=30)]
    assert victims(docs, 30, POLICY, keep="new") == [("g1", Reason.LIMIT)]


def test_the_heaviest_owner_is_counted_without_the_upload_itself() -> None:
    # acme uploads a large document; before it, globex holds more (300 > 0+100),
    # so globex loses its lowest-scoring, though acme's upload brought the overflow.
    docs = [owned("a1", "acme", tokens=100, last=0), owned("g1", "globex", tokens=300, last=5),
            owned("big", "acme", tokens=700, last=10)]
    assert victims(docs, 10, POLICY, keep="big") == [("g1", Reason.LIMIT)]
