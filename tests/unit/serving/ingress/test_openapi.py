"""The OpenAPI document (serving/ingress/openapi.py) of the ingress's real FastAPI app with
every route Serve binds to it: public, OpenAI-shaped errors, no 422, no HTML pages."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from serving.config import ServiceConfig

API_KEY = "k-0123"


def make_app(api_keys: list[str]):
    from ray.serve.llm.ingress import make_fastapi_ingress

    from serving.ingress.ingress import CacheRouteIngress, _endpoint_map, build_fastapi_app

    app = build_fastapi_app(ServiceConfig.model_validate(
        {"server": {"api_keys": api_keys, "api_keys_env": None}}))
    # Binds every route of the deployed ingress onto `app`, as Serve does.
    make_fastapi_ingress(CacheRouteIngress, endpoint_map=_endpoint_map(), app=app)
    return app


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    resp = TestClient(make_app([API_KEY])).get("/openapi.json")  # no key: public
    assert resp.status_code == 200, resp.text
    return resp.json()


def operations(document: dict[str, Any]):
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_every_route_is_described(document: dict[str, Any]) -> None:
    paths = set(document["paths"])
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/prefixes",
            "/ready", "/health", "/metrics"} <= paths
    assert "/openapi.json" not in paths  # the document does not describe itself


def test_no_422_and_bodies_document_400_and_413(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        assert "422" not in op["responses"], (method, path)
        if "requestBody" in op:
            assert {"400", "404", "413"} <= set(op["responses"]), (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_errors_are_openai_shaped(document: dict[str, Any]) -> None:
    from serving.ingress.auth import openai_error

    schema = document["components"]["schemas"]["ErrorResponse"]
    jsonschema.validate(json.loads(openai_error(400, "bad", param="n").body), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"detail": [{"loc": ["body"], "msg": "x"}]}, schema)
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (method, path, status)


def test_authenticated_paths_declare_the_bearer_scheme(document: dict[str, Any]) -> None:
    from serving.ingress.auth import PUBLIC_PATHS

    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, method, op in operations(document):
        if path in PUBLIC_PATHS:
            assert "security" not in op and "401" not in op["responses"], path
        else:
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            assert "401" in op["responses"], (method, path)


def test_without_keys_there_is_no_401() -> None:
    document = TestClient(make_app([])).get("/openapi.json").json()
    assert "securitySchemes" not in document["components"]
    assert all("401" not in op["responses"] for _, _, op in operations(document))


def test_streaming_operations_document_server_sent_events(document: dict[str, Any]) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(content), path
    models = document["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" not in models


def test_prefix_registration_documents_the_refresh_200(document: dict[str, Any]) -> None:
    assert {"200", "201"} <= set(document["paths"]["/v1/prefixes"]["post"]["responses"])


def test_html_doc_pages_are_gone_and_the_document_is_the_only_public_extra() -> None:
    client = TestClient(make_app([API_KEY]), headers={"Authorization": f"Bearer {API_KEY}"})
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        resp = client.get(page)
        assert resp.status_code == 404, page
        assert resp.json()["error"]["code"] == "not_found"


def test_the_description_states_the_body_limit(document: dict[str, Any]) -> None:
    assert str(ServiceConfig().server.max_body_bytes) in document["info"]["description"]


def test_metrics_is_documented_as_prometheus_text(document: dict[str, Any]) -> None:
    content = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]
