"""The /v1/prefixes routes on the ingress's real FastAPI app (auth, error shaping),
driven with a TestClient; the registry behind them has a fake engine
(tests/unit/serving/prefixes/prefix_fakes.py). Also: hit counting from chat responses, plain and streamed,
and the ingress's wiring of both."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse, StreamingResponse

from serving.config import ServiceConfig
from serving.prefixes.api import PREFIX_ENDPOINTS, PrefixRoutes, observe_response
from serving.prefixes.registry import PrefixRegistry
from serving.prefixes.store import PrefixStoreError
from serving.tenants.identity import tenant_salt
from tests.unit.serving.prefixes.prefix_fakes import (
    MODEL,
    OWNER,
    SYSTEM,
    FakeBackend,
    make_registry,
    make_store,
    system,
    user,
)

API_KEY = "k-0123"


class Host(PrefixRoutes):
    """Stands in for the ingress class, which inherits the same routes."""

    def __init__(self, registry: PrefixRegistry) -> None:
        self._prefix_registry = registry


# Two more tenants beside `default` (API_KEY), globex with a quota of its own.
ACME_KEY, GLOBEX_KEY = "k-acme", "k-globex"
TENANTS = {"acme": {"api_keys": [ACME_KEY]},
           "globex": {"api_keys": [GLOBEX_KEY], "limits": {"max_prefixes": 2}}}


def make_client(registry: PrefixRegistry, key: str = API_KEY) -> TestClient:
    from serving.ingress.ingress import build_fastapi_app

    app = build_fastapi_app(ServiceConfig.model_validate(
        {"server": {"api_keys": [API_KEY], "api_keys_env": None, "tenants": TENANTS}}))
    host = Host(registry)
    for name, route in PREFIX_ENDPOINTS.items():
        route(app)(getattr(host, name))
    return TestClient(app, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    with make_client(make_registry(backend=backend, max_prefix_tokens=300)) as c:
        yield c


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [SYSTEM], **fields}


def test_register_list_delete(client: TestClient, backend: FakeBackend) -> None:
    created = client.post("/v1/prefixes", json=body(ttl_s=120, tenant="acme"))
    assert created.status_code == 201, created.text
    prefix = created.json()
    assert prefix["object"] == "prefix" and len(prefix["key"]) == 64
    # The client's own narrowing value is echoed, under its name; never the tenant's salt.
    assert (prefix["model"], prefix["cache_salt"], prefix["ttl_s"]) == (MODEL, "acme", 120.0)
    assert "tenant" not in prefix and tenant_salt("default") not in created.text
    assert prefix["home_replica"] in {"r0", "r1", "r2"}
    assert (prefix["hits"], prefix["misses"]) == (0, 0)
    assert prefix["expires_at"] == prefix["created_at"] + 120
    assert prefix["cacheable_tokens"] <= prefix["prefix_tokens"]
    assert len(backend.prewarms) == 1

    again = client.post("/v1/prefixes", json=body(ttl_s=120, tenant="acme"))
    assert (again.status_code, again.json()["key"]) == (200, prefix["key"])

    listed = client.get("/v1/prefixes").json()
    assert listed["object"] == "list"
    assert [p["key"] for p in listed["data"]] == [prefix["key"]]

    deleted = client.delete(f"/v1/prefixes/{prefix['key']}")
    assert deleted.json() == {"object": "prefix.deleted", "key": prefix["key"], "deleted": True}
    gone = client.delete(f"/v1/prefixes/{prefix['key']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"
    assert client.get("/v1/prefixes").json()["data"] == []


@pytest.mark.parametrize(
    ("payload", "status", "code", "needle"),
    [
        (body(ttl_s=-1), 400, "invalid_request", "ttl_s"),
        (body(ttl_s=0), 400, "invalid_request", "ttl_s"),
        (body(ttl_s="soon"), 400, "invalid_request", "ttl_s"),
        (body(ttl_s=10**9), 400, "invalid_request", "ttl_s"),
        (body(messages=[]), 400, "invalid_request", "messages"),
        (body(messages="hi"), 400, "invalid_request", "messages"),
        (body(messages=[{"role": "tool", "content": "x"}]), 400, "invalid_request", "role"),
        (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
         400, "invalid_request", "messages"),
        (body(key="a" * 64), 400, "invalid_request", "key"),  # keys are never chosen
        (body(tenant=""), 400, "invalid_request", "tenant"),
        (body(cache_salt=""), 400, "invalid_request", "cache_salt"),
        (body(model="gpt-nothing"), 404, "model_not_found", "gpt-nothing"),
        (body(messages=[{"role": "system", "content": "x" * 400}]), 413, "request_too_large",
         "limit is 300 tokens"),
    ],
)
def test_bad_input_gets_an_openai_shaped_4xx(client: TestClient, payload: dict, status: int,
                                            code: str, needle: str) -> None:
    resp = client.post("/v1/prefixes", json=payload)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert needle in error["message"] or needle == error["param"]


def test_another_tenants_prefix_is_unknown_to_it(backend: FakeBackend) -> None:
    registry = make_registry(backend=backend, max_prefix_tokens=300)
    with make_client(registry, ACME_KEY) as acme, make_client(registry, GLOBEX_KEY) as globex:
        mine = acme.post("/v1/prefixes", json=body()).json()
        # The same content is a record of globex's own, under another key.
        theirs = globex.post("/v1/prefixes", json=body())
        assert theirs.status_code == 201 and theirs.json()["key"] != mine["key"]
        assert [p["key"] for p in globex.get("/v1/prefixes").json()["data"]] == [
            theirs.json()["key"]]
        refused = globex.delete(f"/v1/prefixes/{mine['key']}")
        unknown = globex.delete(f"/v1/prefixes/{'b' * 64}")
        assert refused.status_code == unknown.status_code == 404
        # The same words as for a key nobody has: nothing tells it acme's exists.
        assert refused.json() == json.loads(unknown.text.replace("b" * 64, mine["key"]))
        assert [p["key"] for p in acme.get("/v1/prefixes").json()["data"]] == [mine["key"]]


def test_a_tenant_over_its_quota_evicts_its_own_prefixes(backend: FakeBackend) -> None:
    registry = make_registry(backend=backend, max_prefix_tokens=300)
    with make_client(registry, ACME_KEY) as acme, make_client(registry, GLOBEX_KEY) as globex:
        mine = acme.post("/v1/prefixes", json=body()).json()["key"]
        keys = [globex.post("/v1/prefixes", json=body(messages=[system(f"Globex bot {i}.")]))
                .json()["key"] for i in range(3)]
        listed = [p["key"] for p in globex.get("/v1/prefixes").json()["data"]]
        assert sorted(listed) == sorted(keys[1:])  # its max_prefixes is 2
        assert [p["key"] for p in acme.get("/v1/prefixes").json()["data"]] == [mine]


@pytest.mark.parametrize("key", ["not-a-key", "a" * 64, "A" * 64])
def test_unknown_key_is_404(client: TestClient, key: str) -> None:
    resp = client.delete(f"/v1/prefixes/{key}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_routes_need_the_api_key(client: TestClient) -> None:
    for method, path in (("GET", "/v1/prefixes"), ("POST", "/v1/prefixes"),
                         ("DELETE", "/v1/prefixes/" + "a" * 64)):
        resp = client.request(method, path, headers={"Authorization": "Bearer wrong"},
                              json=body())
        assert resp.status_code == 401, (method, resp.text)


def test_store_outage_is_503(backend: FakeBackend) -> None:
    class DownStore:
        async def records(self) -> list:
            raise PrefixStoreError("prefix store (Redis): Connection refused")

        async def close(self) -> None:
            return None

    with make_client(make_registry(DownStore(), backend)) as c:  # type: ignore[arg-type]
        resp = c.get("/v1/prefixes")
    assert resp.status_code == 503
    assert resp.json()["error"] | {"message": ""} == {
        "message": "", "type": "server_error", "code": "service_unavailable", "param": None}


# --- counting hits from chat responses ---------------------------------------------


def usage(cached: int) -> dict[str, Any]:
    return {"usage": {"prompt_tokens": 500, "prompt_tokens_details": {"cached_tokens": cached}}}


def test_plain_and_streamed_responses_are_counted_and_unchanged() -> None:
    metrics = CollectorRegistry()

    async def main() -> None:
        registry = make_registry(make_store(), metrics=metrics)
        record, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                            owner=OWNER)
        use = registry.match(MODEL, [SYSTEM, user("q")], OWNER.cache_salt())
        hit = JSONResponse(usage(record.cacheable_tokens))
        assert observe_response(registry, use, hit) is hit

        chunks = ['data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n',
                  "data: " + json.dumps({"choices": [], **usage(0)}) + "\n\n",
                  "data: [DONE]\n\n"]

        async def stream() -> AsyncIterator[str]:
            for chunk in chunks:
                yield chunk

        streamed = observe_response(registry, use, StreamingResponse(stream()))
        assert [c async for c in streamed.body_iterator] == chunks  # a miss, passed through

        async def no_usage() -> AsyncIterator[str]:
            yield chunks[0]

        quiet = observe_response(registry, use, StreamingResponse(no_usage()))
        assert [c async for c in quiet.body_iterator] == chunks[:1]
        observe_response(registry, use, JSONResponse({"error": {}}, status_code=400))
        await asyncio.gather(*list(registry._pending))
        stored = (await registry.records(OWNER.name))[0]
        assert (stored.hits, stored.misses) == (1, 1)
        assert metrics.get_sample_value("cacheroute_prefix_hits_total") == 1
        assert metrics.get_sample_value("cacheroute_prefix_misses_total") == 1
    asyncio.run(main())


# --- the ingress's wiring ----------------------------------------------------------


def test_ingress_serves_the_prefix_routes_and_watches_chat() -> None:
    from serving.ingress.ingress import CacheRouteIngress, _endpoint_map

    endpoints = _endpoint_map()
    for name in PREFIX_ENDPOINTS:
        assert name in endpoints
        assert inspect.iscoroutinefunction(getattr(CacheRouteIngress, name))
    # FastAPI reads the chat route's body and request from this signature.
    assert list(inspect.signature(CacheRouteIngress.chat).parameters) == ["self", "body",
                                                                          "request"]
    assert "prefixes" in inspect.signature(CacheRouteIngress.__init__).parameters


def test_serve_binds_the_inherited_prefix_routes_to_the_ingress_instance() -> None:
    from ray.serve.llm.ingress import make_fastapi_ingress

    from serving.ingress.ingress import CacheRouteIngress, _endpoint_map, build_fastapi_app

    app = build_fastapi_app(ServiceConfig())
    make_fastapi_ingress(CacheRouteIngress, endpoint_map=_endpoint_map(), app=app)
    routes = {(r.path, m): r for r in app.routes if "prefixes" in getattr(r, "path", "")
              for m in r.methods}
    assert set(routes) == {("/v1/prefixes", "POST"), ("/v1/prefixes", "GET"),
                           ("/v1/prefixes/{key}", "DELETE")}
    # Serve injects `self` (the replica's instance); clients send only these.
    params = {k: sorted(p.name for p in r.dependant.query_params + r.dependant.path_params
                        + r.dependant.body_params) for k, r in routes.items()}
    assert params == {("/v1/prefixes", "POST"): ["body"], ("/v1/prefixes", "GET"): [],
                      ("/v1/prefixes/{key}", "DELETE"): ["key"]}
    assert routes[("/v1/prefixes", "POST")].status_code == 201


def test_registry_settings_follow_the_service_config() -> None:
    from serving.prefixes.backend import registry_settings

    config = ServiceConfig.model_validate({
        "engine": {"max_model_len": 2048, "block_size": 16},
        "prefixes": {"max_prefix_tokens": 4096, "default_ttl_s": 60, "rewarm_interval_s": 5}})
    settings = registry_settings(config, frozenset({"m"}))
    assert settings.max_prefix_tokens == 2047  # the prewarm's one token must fit
    assert (settings.block_size, settings.default_ttl_s, settings.rewarm_interval_s) == (
        16, 60.0, 5.0)
