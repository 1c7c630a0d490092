"""Who may call: the tenant of every request, and the token that guards /metrics.

`TenantMiddleware` runs first on every request (only tracing is outside it). It reads
the bearer token, finds its tenant (serving/tenants/identity.py: a constant-time
compare against every key) and puts the tenant in the ASGI scope, where
`tenant_of(request)` reads it; a missing or unknown key is a 401 before anything else
runs. A service without keys has one anonymous tenant that every caller is part of.

Public paths need no key: a load balancer's probes and the API description. So does
/metrics, unless `server.metrics_token_env` names a token: then /metrics needs that
token and no tenant key opens it, so a cluster whose API port is public keeps its
metrics to its own Prometheus. Metrics stay on the API port because every request
reaches the ingress through Serve's one HTTP port; docs/security.md says why that is
safe to publish and when to keep it private.
"""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.ingress import openapi as api_schema
from serving.tenants.identity import STATE_KEY, Tenants

METRICS_PATH = "/metrics"
# Paths a probe or scraper must reach without a tenant's key; the API description is
# public so tools can read it (serving/ingress/openapi.py says why).
PUBLIC_PATHS = frozenset({"/ready", "/health", METRICS_PATH, api_schema.OPENAPI_PATH})


def openai_error(status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "code": code}},
    )


def bearer_token(scope: Scope) -> bytes:
    """The token of the request's `Authorization: Bearer` header, or b""."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, rest = value.partition(b" ")
            return rest.strip() if scheme.lower() == b"bearer" else b""
    return b""


def _unauthorized(token: bytes) -> JSONResponse:
    message = ("Missing API key: send 'Authorization: Bearer <key>'." if not token
               else "Incorrect API key provided.")
    return openai_error(401, message, code="invalid_api_key")


class TenantMiddleware:
    """Puts the request's tenant in its scope, or answers 401 (module docstring)."""

    def __init__(self, app: ASGIApp, *, tenants: Tenants,
                 metrics_token: str | None = None) -> None:
        self.app = app
        self._tenants = tenants
        self._metrics_token = metrics_token.encode() if metrics_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path")
        if path in PUBLIC_PATHS:
            if path == METRICS_PATH and self._metrics_token is not None:
                token = bearer_token(scope)
                if not hmac.compare_digest(token, self._metrics_token):
                    await _unauthorized(token)(scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return
        tenant = self._tenants.anonymous
        if tenant is None:
            token = bearer_token(scope)
            tenant = self._tenants.resolve(token)
            if tenant is None:
                await _unauthorized(token)(scope, receive, send)
                return
        scope.setdefault("state", {})[STATE_KEY] = tenant
        await self.app(scope, receive, send)
