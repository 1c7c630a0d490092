"""The admission-limit middleware (serving/ingress/admission_limits.py): on a tiny
Starlette app through httpx, on hand-made ASGI messages where a client cannot produce
the case (cancellation, a disconnect mid-stream), and on the ingress's real app for
where it sits among the other middleware."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.config import ServiceConfig
from serving.ingress.admission_limits import AdmissionLimitMiddleware
from serving.ingress.metrics import AdmissionMetrics
from serving.tenants.config import TenantLimits
from serving.tenants.identity import STATE_KEY, Tenant

PUBLIC = frozenset({"/health"})
TENANTS = {
    "metered": Tenant("metered", TenantLimits(requests_per_s=1.0, burst=2)),
    "single": Tenant("single", TenantLimits(max_concurrent_requests=1)),
    "open": Tenant("open", TenantLimits()),
}


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A Starlette app behind the middleware, a tenant set from `x-tenant` (as the
    tenant middleware would from the key), and a gate the streaming route waits on."""

    def __init__(self, *, cap: int = 8) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.clock = Clock()
        self.registry = CollectorRegistry()

        async def stream(request: Request) -> Response:
            async def chunks() -> AsyncIterator[bytes]:
                yield b"data: first\n\n"
                self.started.set()
                await self.gate.wait()
                yield b"data: [DONE]\n\n"
            return StreamingResponse(chunks(), media_type="text/event-stream")

        async def plain(request: Request) -> Response:
            return JSONResponse({"ok": True})

        async def boom(request: Request) -> Response:
            raise RuntimeError("the app failed")

        app = Starlette(routes=[Route("/v1/stream", stream), Route("/v1/plain", plain),
                                Route("/v1/boom", boom), Route("/health", plain)])
        self.limits = AdmissionLimitMiddleware(
            app, max_concurrent_requests=cap, public_paths=PUBLIC, clock=self.clock,
            metrics=AdmissionMetrics(self.registry))
        self.app = with_tenant(self.limits)

    @property
    def in_flight(self) -> int:
        return self.limits.quota.in_flight

    def refused(self, reason: str) -> float | None:
        return self.registry.get_sample_value("cacheroute_ingress_refused_requests_total",
                                              {"reason": reason})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://test")


def with_tenant(app: ASGIApp) -> ASGIApp:
    async def tenant_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            name = dict(scope["headers"]).get(b"x-tenant", b"open").decode()
            scope.setdefault("state", {})[STATE_KEY] = TENANTS[name]
        await app(scope, receive, send)
    return tenant_app


def as_(tenant: str) -> dict[str, str]:
    return {"x-tenant": tenant}


def assert_openai_error(resp: httpx.Response, status: int, type_: str, code: str,
                        retry_after: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    assert resp.headers["retry-after"] == retry_after


def test_a_tenant_over_its_rate_gets_429_with_retry_after_from_its_bucket() -> None:
    async def scenario() -> None:
        h = Harness()
        async with h.client() as c:
            for _ in range(2):
                assert (await c.get("/v1/plain", headers=as_("metered"))).status_code == 200
            resp = await c.get("/v1/plain", headers=as_("metered"))
            assert_openai_error(resp, 429, "requests", "rate_limit_exceeded", "1")
            h.clock.now += 0.5  # half a token: still refused
            assert (await c.get("/v1/plain", headers=as_("metered"))).status_code == 429
            assert (await c.get("/v1/plain", headers=as_("open"))).status_code == 200
            h.clock.now += 0.5
            assert (await c.get("/v1/plain", headers=as_("metered"))).status_code == 200
        assert (h.refused("rate"), h.refused("tenant_concurrency")) == (2.0, 0.0)
        assert h.in_flight == 0

    asyncio.run(scenario())


def test_a_stream_holds_its_slot_until_its_last_chunk_is_sent() -> None:
    async def scenario() -> None:
        h = Harness()
        async with h.client() as c:
            first = asyncio.create_task(c.get("/v1/stream", headers=as_("single")))
            await asyncio.wait_for(h.started.wait(), 5)
            assert h.in_flight == 1
            resp = await c.get("/v1/plain", headers=as_("single"))
            assert_openai_error(resp, 429, "requests", "rate_limit_exceeded", "1")
            assert (await c.get("/v1/plain", headers=as_("open"))).status_code == 200
            h.gate.set()
            done = await asyncio.wait_for(first, 5)
            assert done.status_code == 200 and done.text.endswith("data: [DONE]\n\n")
            assert h.in_flight == 0
            assert (await c.get("/v1/plain", headers=as_("single"))).status_code == 200
        assert h.refused("tenant_concurrency") == 1.0

    asyncio.run(scenario())


def test_a_full_ingress_answers_503_overloaded_to_every_tenant() -> None:
    async def scenario() -> None:
        h = Harness(cap=1)
        async with h.client() as c:
            first = asyncio.create_task(c.get("/v1/stream", headers=as_("single")))
            await asyncio.wait_for(h.started.wait(), 5)
            resp = await c.get("/v1/plain", headers=as_("open"))
            assert_openai_error(resp, 503, "server_error", "server_overloaded", "1")
            # Probes and scrapes are never limited.
            assert (await c.get("/health")).status_code == 200
            h.gate.set()
            await asyncio.wait_for(first, 5)
            assert (await c.get("/v1/plain", headers=as_("open"))).status_code == 200
        assert h.refused("ingress_concurrency") == 1.0

    asyncio.run(scenario())


def test_an_app_that_raises_frees_its_slot() -> None:
    async def scenario() -> None:
        h = Harness(cap=1)
        async with h.client() as c:
            with pytest.raises(RuntimeError, match="the app failed"):
                await c.get("/v1/boom")
        assert h.in_flight == 0

    asyncio.run(scenario())


def scope_of(path: str, tenant: Tenant) -> Scope:
    return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
            "server": ("test", 80), "client": ("c", 1), "root_path": "",
            "state": {STATE_KEY: tenant}}


def test_a_cancelled_request_frees_its_slot() -> None:
    async def scenario() -> None:
        h = Harness()
        sent: list[Message] = []

        async def receive() -> Message:
            await asyncio.Event().wait()  # the client says nothing more
            raise AssertionError

        async def send(message: Message) -> None:
            sent.append(message)

        task = asyncio.create_task(h.limits(scope_of("/v1/stream", TENANTS["open"]),
                                            receive, send))
        await asyncio.wait_for(h.started.wait(), 5)
        assert h.in_flight == 1
        task.cancel()  # as Serve cancels a request whose client left
        with pytest.raises(asyncio.CancelledError):
            await task
        assert h.in_flight == 0

    asyncio.run(scenario())


def test_a_client_disconnecting_mid_stream_frees_its_slot() -> None:
    async def scenario() -> None:
        h = Harness()
        gone = asyncio.Event()

        async def receive() -> Message:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            pass

        task = asyncio.create_task(h.limits(scope_of("/v1/stream", TENANTS["open"]),
                                            receive, send))
        await asyncio.wait_for(h.started.wait(), 5)
        assert h.in_flight == 1
        gone.set()
        await asyncio.wait_for(task, 5)  # the stream stopped without its gate opening
        assert not h.gate.is_set() and h.in_flight == 0

    asyncio.run(scenario())


def test_the_slot_is_free_once_the_last_byte_is_sent_before_the_app_returns() -> None:
    async def scenario() -> None:
        clock_app_done = asyncio.Event()
        seen: list[int] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            seen.append(limits.quota.in_flight)
            await send({"type": "http.response.body", "body": b""})
            seen.append(limits.quota.in_flight)
            await clock_app_done.wait()  # work after the response (a background task)

        limits = AdmissionLimitMiddleware(app, max_concurrent_requests=1,
                                          public_paths=PUBLIC,
                                          metrics=AdmissionMetrics(CollectorRegistry()))

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            pass

        task = asyncio.create_task(limits(scope_of("/v1/x", TENANTS["open"]), receive, send))
        while len(seen) < 2:
            await asyncio.sleep(0)
        assert seen == [1, 0]
        clock_app_done.set()
        await task
        assert limits.quota.in_flight == 0

    asyncio.run(scenario())


# --- on the ingress's own app ----------------------------------------------------------

KEY, METERED_KEY = "k-default-0123", "k-metered-4567"


def ingress_client(**server: Any) -> TestClient:
    from serving.ingress.ingress import build_fastapi_app

    config = ServiceConfig.model_validate({"server": {
        "api_keys": [KEY], "api_keys_env": None, "max_body_bytes": 4096,
        # A token every 1000 s: the second request is refused whatever the clock does.
        "tenants": {"metered": {"api_keys": [METERED_KEY],
                                "limits": {"requests_per_s": 0.001, "burst": 1}}},
        **server}})
    app = build_fastapi_app(config)

    @app.post("/v1/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {"keys": sorted(body)}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return TestClient(app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_ingress_limits_by_the_tenant_of_the_key_before_reading_the_body() -> None:
    client = ingress_client()
    assert client.post("/v1/echo", json={"a": 1}, headers=bearer(METERED_KEY)).status_code == 200
    # Over its rate, a body over the size limit is refused for the rate (429), not
    # read and refused for its size (413).
    resp = client.post("/v1/echo", content=b"x" * 10_000, headers={
        **bearer(METERED_KEY), "content-type": "application/json"})
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert resp.headers["retry-after"] == "1000"
    # The default tenant has no rate limit; a wrong key is still a 401 first.
    for _ in range(3):
        assert client.post("/v1/echo", json={"a": 1}, headers=bearer(KEY)).status_code == 200
    assert client.post("/v1/echo", json={}, headers=bearer("wrong")).status_code == 401


def test_the_ingress_never_limits_its_public_paths() -> None:
    client = ingress_client()
    client.post("/v1/echo", json={}, headers=bearer(METERED_KEY))
    assert client.post("/v1/echo", json={}, headers=bearer(METERED_KEY)).status_code == 429
    for path in ("/openapi.json", "/health"):
        assert client.get(path, headers=bearer(METERED_KEY)).status_code == 200, path


def test_the_openapi_document_lists_429_and_503_with_retry_after() -> None:
    document = ingress_client().get("/openapi.json").json()
    responses = document["paths"]["/v1/echo"]["post"]["responses"]
    for status in ("429", "503"):
        assert responses[status]["headers"]["Retry-After"]["schema"]["minimum"] == 1
    assert "429" not in document["paths"]["/health"]["get"]["responses"]


def test_the_middleware_travels_as_plain_arguments_and_counts_on_the_apps_registry() -> None:
    """The app is built in the CLI and pickled to the ingress replica: the quota and
    the metrics must be made there, from arguments that pickle."""
    from ray import cloudpickle

    from serving.ingress.ingress import build_fastapi_app
    from serving.observability.metrics import REGISTRY

    app = build_fastapi_app(ServiceConfig.model_validate({"server": {
        "max_concurrent_requests": 7}}))
    [middleware] = [m for m in app.user_middleware if m.cls is AdmissionLimitMiddleware]
    args, kwargs = cloudpickle.loads(cloudpickle.dumps((middleware.args, middleware.kwargs)))
    built = middleware.cls(lambda *a: None, *args, **kwargs)
    assert built.quota.max_concurrent_requests == 7
    assert built._metrics.registry is REGISTRY
