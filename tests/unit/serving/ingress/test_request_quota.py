"""The admission accounting (serving/ingress/request_quota.py) on a hand-driven clock:
token buckets, per-tenant and ingress-wide concurrency, the order of the checks, and
slots that free exactly once."""

from __future__ import annotations

import pytest

from serving.ingress.request_quota import (
    Reason,
    Refusal,
    RequestQuota,
    Slot,
    TokenBucket,
    default_burst,
    retry_after_s,
)
from serving.tenants.config import TenantLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_quota(cap: int = 100) -> tuple[RequestQuota, Clock]:
    clock = Clock()
    return RequestQuota(max_concurrent_requests=cap, clock=clock), clock


def admitted(outcome: Slot | Refusal) -> Slot:
    assert isinstance(outcome, Slot), outcome
    return outcome


def refused(outcome: Slot | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    return outcome


UNLIMITED = TenantLimits()


def test_default_burst_is_one_seconds_worth_and_at_least_one() -> None:
    assert [default_burst(r) for r in (0.1, 1.0, 2.5, 10.0)] == [1, 1, 3, 10]


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert [retry_after_s(w) for w in (0.0, 0.001, 1.0, 1.2, 59.5)] == [1, 1, 1, 2, 60]


def test_a_bucket_starts_full_refills_at_its_rate_and_holds_at_most_burst() -> None:
    bucket = TokenBucket(2.0, 3, now=0.0)
    for _ in range(3):
        assert bucket.wait_s(0.0) == 0.0
        bucket.take(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert bucket.wait_s(0.25) == pytest.approx(0.25)
    assert bucket.wait_s(0.5) == 0.0
    # A long idle spell refills to burst, not beyond.
    for _ in range(3):
        bucket.take(100.0)
    assert bucket.wait_s(100.0) > 0


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    bucket = TokenBucket(1.0, 1, now=10.0)
    bucket.take(10.0)
    assert bucket.wait_s(5.0) == pytest.approx(1.0)
    assert bucket.wait_s(10.5) == pytest.approx(0.5)


def test_no_rate_and_no_tenant_cap_admit_up_to_the_ingress_cap() -> None:
    quota, _ = make_quota(cap=5)
    slots = [admitted(quota.admit("a", UNLIMITED)) for _ in range(5)]
    # The tenant's own cap defaults to the ingress's, so it is the tenant's refusal.
    assert refused(quota.admit("a", UNLIMITED)).reason is Reason.TENANT_CONCURRENCY
    assert refused(quota.admit("b", UNLIMITED)).reason is Reason.INGRESS_CONCURRENCY
    slots[0].release()
    admitted(quota.admit("b", UNLIMITED))


def test_a_tenant_over_its_rate_is_refused_until_its_next_token() -> None:
    quota, clock = make_quota()
    limits = TenantLimits(requests_per_s=0.5, burst=2)
    for _ in range(2):
        admitted(quota.admit("a", limits)).release()
    refusal = refused(quota.admit("a", limits))
    assert (refusal.reason, refusal.retry_after_s, refusal.limit) == (Reason.RATE, 2, 0.5)
    clock.now += 1.5
    assert refused(quota.admit("a", limits)).retry_after_s == 1  # 0.5 s left, rounded up
    clock.now += 0.5
    admitted(quota.admit("a", limits))
    assert refused(quota.admit("a", limits)).reason is Reason.RATE


def test_the_default_burst_applies_when_burst_is_null() -> None:
    quota, _ = make_quota()
    limits = TenantLimits(requests_per_s=3.0)
    for _ in range(3):
        admitted(quota.admit("a", limits))
    assert refused(quota.admit("a", limits)).reason is Reason.RATE


def test_rates_are_per_tenant() -> None:
    quota, _ = make_quota()
    limits = TenantLimits(requests_per_s=1.0, burst=1)
    admitted(quota.admit("a", limits))
    assert refused(quota.admit("a", limits)).reason is Reason.RATE
    admitted(quota.admit("b", limits))


def test_a_tenant_at_its_concurrency_is_refused_while_others_are_served() -> None:
    quota, _ = make_quota(cap=10)
    limits = TenantLimits(max_concurrent_requests=2)
    slots = [admitted(quota.admit("a", limits)) for _ in range(2)]
    refusal = refused(quota.admit("a", limits))
    assert (refusal.reason, refusal.retry_after_s, refusal.limit) == (
        Reason.TENANT_CONCURRENCY, 1, 2)
    admitted(quota.admit("b", limits))
    slots[1].release()
    admitted(quota.admit("a", limits))
    assert (quota.in_flight_of("a"), quota.in_flight_of("b"), quota.in_flight) == (2, 1, 3)


def test_the_ingress_cap_refuses_every_tenant_once_full() -> None:
    quota, _ = make_quota(cap=3)
    limits = TenantLimits(max_concurrent_requests=2)
    for tenant in ("a", "a", "b"):
        admitted(quota.admit(tenant, limits))
    refusal = refused(quota.admit("c", limits))
    assert (refusal.reason, refusal.retry_after_s, refusal.limit) == (
        Reason.INGRESS_CONCURRENCY, 1, 3)


def test_rate_is_checked_first_and_a_refusal_spends_no_token() -> None:
    quota, clock = make_quota(cap=10)
    limits = TenantLimits(requests_per_s=1.0, burst=2, max_concurrent_requests=1)
    slot = admitted(quota.admit("a", limits))
    # Over its concurrency, with a token left: the token stays.
    assert refused(quota.admit("a", limits)).reason is Reason.TENANT_CONCURRENCY
    slot.release()
    admitted(quota.admit("a", limits)).release()  # the second token, still there
    assert refused(quota.admit("a", limits)).reason is Reason.RATE
    clock.now += 1.0
    admitted(quota.admit("a", limits))


def test_a_slot_releases_once_and_counts_drop_to_nothing() -> None:
    quota, _ = make_quota(cap=2)
    slot = admitted(quota.admit("a", UNLIMITED))
    other = admitted(quota.admit("a", UNLIMITED))
    slot.release()
    slot.release()
    assert (quota.in_flight_of("a"), quota.in_flight, slot.held, other.held) == (
        1, 1, False, True)
    other.release()
    assert (quota.in_flight_of("a"), quota.in_flight) == (0, 0)
    assert quota._by_tenant == {}  # no entry kept for an idle tenant
