"""The OpenAPI document served at `/openapi.json`, corrected to what the service returns.

FastAPI derives the document from the routes, but three things it says are wrong for
this service, and a client generated from it (or a contract test) would be wrong too:

- Request validation fails with 422 and FastAPI's `HTTPValidationError` list; the
  ingress answers 400 with OpenAI's error object instead (serving/ingress/ingress.py).
- Nothing mentions the bearer-token check (401) in front of every non-public path,
  nor the admission limits there (429, 503: serving/ingress/admission_limits.py), nor
  the body-size limit (413, serving/ingress/limits.py), nor unknown models (404), nor
  the server-sent events a `"stream": true` request gets instead of JSON.
- Its Swagger UI and ReDoc pages load their scripts from a CDN at view time: they fail
  on hosts without internet access, and behind the API key a browser cannot open them
  anyway. They are removed; the JSON document stays, public, so gateways, SDK
  generators and contract testers can fetch it without credentials. It only restates
  the OpenAI-compatible contract, which is no secret.

`install` rewrites the document once, on first request, from the routes the app has
then (Serve binds the ingress's routes after the app is built).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

OPENAPI_PATH = "/openapi.json"
_DOC_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})

ERROR_SCHEMA_NAME = "ErrorResponse"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error object; every 4xx and 5xx carries one.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        },
    },
}
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}

_REASONS = {
    400: "Invalid request: malformed JSON, a wrong type or value, a prompt beyond the "
         "context window.",
    401: "Missing or wrong API key.",
    404: "Unknown model or resource.",
    408: "The request timed out in the service.",
    413: "Request body (or registered prefix) too large.",
    429: "The tenant is over its request rate or its requests in flight; see Retry-After.",
    503: "The service holds as many requests as it takes; see Retry-After.",
}


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                 "schema": {"type": "integer", "minimum": 1}}}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {"description": _REASONS[status],
                                "content": {"application/json": {"schema": dict(_ERROR_REF)}}}
    if status in (429, 503):
        response["headers"] = dict(_RETRY_AFTER)
    return response


def _body_schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return document.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[1], {})
    return schema


METRICS_PATH = "/metrics"
# What prometheus_client's exposition serves (serving/observability/telemetry.py CONTENT_TYPE).
METRICS_CONTENT_TYPE = "text/plain"


def correct_document(document: dict[str, Any], *, public_paths: frozenset[str],
                     authenticated: bool) -> dict[str, Any]:
    """`document` (FastAPI's) with the error responses the service really gives."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    if authenticated:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            statuses: list[int] = []
            if "requestBody" in operation:
                # A body names a model; it is parsed, validated and may time out.
                statuses += [400, 404, 408, 413]
            elif "{" in path:
                statuses.append(404)  # the addressed model or prefix does not exist
            if path not in public_paths:
                # Admission limits (serving/ingress/admission_limits.py).
                statuses += [429, 503]
                if authenticated:
                    statuses.append(401)
                    operation["security"] = [{"bearerAuth": []}]
            for status in sorted(statuses):
                responses.setdefault(str(status), _error_response(status))
            if "stream" in _body_schema(document, operation).get("properties", {}):
                # `"stream": true` answers 200 with server-sent events instead of JSON.
                ok = responses.setdefault("200", {"description": "Successful Response"})
                ok.setdefault("content", {})["text/event-stream"] = {"schema": {"type": "string"}}
        if path == METRICS_PATH and "get" in operations:
            # Prometheus's text exposition format, not JSON.
            operations["get"].setdefault("responses", {})["200"] = {
                "description": "Prometheus metrics",
                "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
            }
    return document


def _version() -> str:
    try:
        return importlib.metadata.version("cacheroute")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


def description(max_body_bytes: int) -> str:
    return ("OpenAI-compatible completions and chat over vLLM engines with KV-cache-aware "
            "routing, plus the prefix registry and probes. Every error is OpenAI's error "
            f"object. Request bodies above {max_body_bytes} bytes are refused with 413 "
            "before they are parsed.")


def install(app: FastAPI, *, public_paths: frozenset[str], authenticated: bool,
            max_body_bytes: int) -> None:
    """Serve the corrected document at `/openapi.json` and drop the HTML doc pages."""
    app.router.routes[:] = [r for r in app.router.routes
                            if getattr(r, "path", None) not in _DOC_PAGES]
    app.docs_url = app.redoc_url = None

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title="cacheroute", version=_version(),
                                   description=description(max_body_bytes), routes=app.routes)
            app.openapi_schema = correct_document(document, public_paths=public_paths,
                                                  authenticated=authenticated)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
