"""Admission limits at the ingress: each tenant's request rate and requests in flight,
and the ingress's own (serving/ingress/request_quota.py has the accounting and the
order of the checks).

An ASGI middleware, inside the tenant middleware (the tenant is known) and outside
the body limit, so a refused request is answered before its body is read: a tenant
over its limits costs the ingress one header scan, not a buffered body. Answers, in
OpenAI's shape with a `Retry-After` header in whole seconds:

- 429 `rate_limit_exceeded` for a tenant over its `requests_per_s` (Retry-After: when
  its bucket holds the next token) or its `max_concurrent_requests` (Retry-After: 1);
- 503 `server_overloaded` when the ingress already holds `server.max_concurrent_requests`
  (Retry-After: 1), as OpenAI's API answers an overloaded engine.

An admitted request holds its slot until the last byte of its response is sent (a
stream until its end), or until the app returns or raises, however it ends: the
client gone, the task cancelled, an exception. The slot is released in a `finally`,
and releasing is idempotent, so no path leaks one or frees two. Public paths (probes,
metrics, the API description) are never limited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.ingress.metrics import AdmissionMetrics
from serving.ingress.request_quota import Reason, Refusal, RequestQuota
from serving.tenants.identity import STATE_KEY as TENANT_STATE_KEY
from serving.tenants.identity import Tenant

RATE_LIMIT_CODE = "rate_limit_exceeded"
OVERLOADED_CODE = "server_overloaded"


def refusal_message(refusal: Refusal) -> str:
    if refusal.reason is Reason.RATE:
        return (f"Rate limit reached: this API key's tenant may send {refusal.limit:g} "
                f"requests per second. Retry after {refusal.retry_after_s} s.")
    if refusal.reason is Reason.TENANT_CONCURRENCY:
        return (f"Too many requests in flight: this API key's tenant may have "
                f"{refusal.limit:g} at once. Retry when one has finished.")
    return ("The server is overloaded: it holds as many requests as it takes "
            f"(server.max_concurrent_requests: {refusal.limit:g}). Retry shortly.")


def refusal_response(refusal: Refusal) -> JSONResponse:
    overloaded = refusal.reason is Reason.INGRESS_CONCURRENCY
    # OpenAI's API types a rate-limit error by what was limited ("requests").
    status, type_, code = ((503, "server_error", OVERLOADED_CODE) if overloaded
                           else (429, "requests", RATE_LIMIT_CODE))
    return JSONResponse(status_code=status, headers={"retry-after": str(refusal.retry_after_s)},
                        content={"error": {"message": refusal_message(refusal), "type": type_,
                                           "param": None, "code": code}})


def _final_body(message: Message) -> bool:
    return message["type"] == "http.response.body" and not message.get("more_body", False)


class AdmissionLimitMiddleware:
    """Refuses a request over its tenant's or the ingress's limits (module docstring)."""

    def __init__(self, app: ASGIApp, *, max_concurrent_requests: int,
                 public_paths: frozenset[str], clock: Callable[[], float] = time.monotonic,
                 metrics: AdmissionMetrics | None = None) -> None:
        self.app = app
        self.quota = RequestQuota(max_concurrent_requests=max_concurrent_requests, clock=clock)
        self._public_paths = public_paths
        # Built here, in the serving process, not where the app is built and pickled.
        self._metrics = metrics or AdmissionMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self._public_paths:
            await self.app(scope, receive, send)
            return
        tenant: Tenant | None = scope.get("state", {}).get(TENANT_STATE_KEY)
        if tenant is None:  # the tenant middleware runs outside this one, always
            raise LookupError("request has no tenant: is the tenant middleware installed "
                              "outside the admission limits?")
        outcome = self.quota.admit(tenant.name, tenant.limits)
        if isinstance(outcome, Refusal):
            self._metrics.refused.labels(outcome.reason.value).inc()
            await refusal_response(outcome)(scope, receive, send)
            return
        slot = outcome

        async def send_then_release(message: Message) -> None:
            await send(message)
            if _final_body(message):
                slot.release()

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            slot.release()
