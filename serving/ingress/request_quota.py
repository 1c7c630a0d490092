"""Admission accounting: each tenant's request rate and requests in flight, and the
requests in flight of the whole ingress. Pure: no ASGI, the clock injected;
serving/ingress/admission_limits.py is the middleware that drives it.

A request is admitted when all three allow it, checked in this order, the first
refusal answered:

1. the tenant's token bucket (`requests_per_s`, refilled continuously, holding at most
   `burst` tokens): empty, it is refused until the next token arrives;
2. the tenant's requests in flight, under its `max_concurrent_requests` (null: the
   ingress-wide cap, so one tenant alone may fill the ingress but no more);
3. every tenant's requests in flight together, under `server.max_concurrent_requests`.

A token is taken only when the request is admitted, so a request refused for
concurrency does not also spend its tenant's rate. An admitted request holds a `Slot`
until it is released (serving/ingress/admission_limits.py releases it when the
response is sent, the client is gone or the app failed); release is idempotent, so
one request can never free two slots.

State: one bucket and one count per tenant that has sent a request (tenants are the
configured ones plus at most `anonymous`, so the maps stay small); a tenant's count
is dropped when it reaches 0. Every call runs on the ingress's event loop, so there
is no lock. Cost: O(1) per admission and release.

The limits are per ingress replica: with several, each keeps its own buckets and
counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from serving.tenants.config import TenantLimits


class Reason(str, Enum):
    """Why a request was refused; also the label of the refusal counter."""

    RATE = "rate"
    TENANT_CONCURRENCY = "tenant_concurrency"
    INGRESS_CONCURRENCY = "ingress_concurrency"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    retry_after_s: int  # whole seconds, at least 1 (the Retry-After header)
    limit: float  # the limit that refused: requests/s, or requests in flight


def default_burst(requests_per_s: float) -> int:
    """The bucket size when `burst` is null: one second's worth, at least one request."""
    return max(1, math.ceil(requests_per_s))


def retry_after_s(wait_s: float) -> int:
    """`wait_s` as a Retry-After value: whole seconds, rounded up, at least 1 (a 0
    would invite a retry that is refused again)."""
    return max(1, math.ceil(wait_s))


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` held; starts full."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        # A clock that steps back (it is monotonic in production) adds nothing.
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        self._at = max(self._at, now)

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available: 0 when one is."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate_per_s

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0


class Slot:
    """One admitted request's place; `release()` frees it, once."""

    def __init__(self, quota: "RequestQuota", tenant: str) -> None:
        self._quota = quota
        self._tenant = tenant
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._quota._release(self._tenant)


class RequestQuota:
    """Admits or refuses requests by tenant (module docstring: the checks and order)."""

    def __init__(self, *, max_concurrent_requests: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_concurrent_requests = max_concurrent_requests
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._by_tenant: dict[str, int] = {}
        self._total = 0

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet released, every tenant together."""
        return self._total

    def in_flight_of(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)

    def tenant_cap(self, limits: TenantLimits) -> int:
        return (self.max_concurrent_requests if limits.max_concurrent_requests is None
                else limits.max_concurrent_requests)

    def _bucket(self, tenant: str, limits: TenantLimits, now: float) -> TokenBucket | None:
        if limits.requests_per_s is None:
            return None
        bucket = self._buckets.get(tenant)
        if bucket is None:
            burst = limits.burst if limits.burst is not None else default_burst(
                limits.requests_per_s)
            bucket = self._buckets[tenant] = TokenBucket(limits.requests_per_s, burst, now)
        return bucket

    def admit(self, tenant: str, limits: TenantLimits) -> Slot | Refusal:
        """A slot for one request of `tenant` (whose limits are `limits`), or why not."""
        now = self._clock()
        bucket = self._bucket(tenant, limits, now)
        if bucket is not None:
            wait = bucket.wait_s(now)
            if wait > 0:
                return Refusal(Reason.RATE, retry_after_s(wait), bucket.rate_per_s)
        cap = self.tenant_cap(limits)
        if self.in_flight_of(tenant) >= cap:
            # Any of its requests may finish at any moment: a short retry.
            return Refusal(Reason.TENANT_CONCURRENCY, 1, cap)
        if self._total >= self.max_concurrent_requests:
            return Refusal(Reason.INGRESS_CONCURRENCY, 1, self.max_concurrent_requests)
        if bucket is not None:
            bucket.take(now)
        self._by_tenant[tenant] = self.in_flight_of(tenant) + 1
        self._total += 1
        return Slot(self, tenant)

    def _release(self, tenant: str) -> None:
        left = self._by_tenant[tenant] - 1
        if left:
            self._by_tenant[tenant] = left
        else:
            del self._by_tenant[tenant]
        self._total -= 1
