"""/metrics behind its own token: only that token opens it, and the API is unchanged."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.config import validate_config
from serving.ingress.auth import TenantMiddleware
from serving.tenants.identity import Tenants, tenant_of


def _client(*, metrics_token: str | None, keys: list[str]) -> TestClient:
    async def metrics(request) -> PlainTextResponse:
        return PlainTextResponse("cacheroute_up 1\n")

    async def models(request) -> PlainTextResponse:
        return PlainTextResponse(tenant_of(request).name)

    config = validate_config({"server": {"api_keys": keys, "api_keys_env": None}})
    app = Starlette(routes=[Route("/metrics", metrics), Route("/v1/models", models)])
    app.add_middleware(TenantMiddleware, tenants=Tenants.from_config(config),
                       metrics_token=metrics_token)
    return TestClient(app)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_metrics_token_metrics_are_public():
    assert _client(metrics_token=None, keys=["k"]).get("/metrics").status_code == 200


@pytest.mark.parametrize("headers", [{}, _bearer("k"), _bearer("scrape-secretX")])
def test_with_a_metrics_token_only_that_token_reads_metrics(headers):
    client = _client(metrics_token="scrape-secret", keys=["k"])
    refused = client.get("/metrics", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/metrics", headers=_bearer("scrape-secret")).status_code == 200


def test_the_metrics_token_is_no_api_key():
    client = _client(metrics_token="scrape-secret", keys=["k"])
    assert client.get("/v1/models", headers=_bearer("scrape-secret")).status_code == 401
    assert client.get("/v1/models", headers=_bearer("k")).text == "default"


def test_the_token_comes_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch):
    config = validate_config({"server": {"metrics_token_env": "SCRAPE_TOKEN"}})
    monkeypatch.delenv("SCRAPE_TOKEN", raising=False)
    assert config.server.resolved_metrics_token() is None
    monkeypatch.setenv("SCRAPE_TOKEN", " s3cret \n")
    assert config.server.resolved_metrics_token() == "s3cret"
