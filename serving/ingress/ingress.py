"""The HTTP ingress: `ray.serve.llm`'s OpenAI ingress plus auth, readiness and error shape.

Endpoints beyond upstream's OpenAI set:
- `GET /ready`  200 only when every configured replica has served its warm-up
                generation (see serving/replica/server.py); 503 with the counts otherwise.
                This is the readiness probe for load balancers and Kubernetes.
- `GET /health` 200 while the ingress itself runs (liveness).
- `GET /metrics` Prometheus metrics: the router's decisions and each replica's cache
                telemetry (serving/observability/telemetry.py).
- `POST/GET /v1/prefixes`, `DELETE /v1/prefixes/{key}`: the prefix registry
                (serving/prefixes/api.py); chat requests are matched against it.
- `POST/GET /v1/documents`, `GET/DELETE /v1/documents/{id}`,
  `POST /v1/documents/{id}/ask`: document analysis (serving/documents/api.py); a
                document's head is registered as a prefix, its questions are chat
                requests through `send_chat` below. A chat completion request with
                an `x-document-id` header is a question about that document.

With `failover.prewarm_on_scale_up`, a background task sends each replica that joins
the hottest prefixes of its ring arc (serving/routing/prewarm.py); with
`routing.replicate_before_spill`, the same task prefills a prefix on the replica its
next request would spill to.

Every request a client sends to an engine (chat, completions, embeddings, score,
tokenize, detokenize, transcriptions) is served under its tenant's cache salt
(serving/tenants/identity.py), the client's own `cache_salt` only narrowing it: set
here, before the router tokenises and hashes the body, so the engine's prefix cache,
the router's ownership index and its token cache are all per tenant
(docs/security.md).

Every error leaves as OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with a 4xx status for anything the client can fix.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ray import serve
from ray.serve.llm import LLMConfig
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import EmbeddingRequest
from ray.serve.schema import ApplicationStatus

from serving.ingress import openapi as api_schema
from serving.ray_private import OpenAIHTTPException, serve_request_id

from serving.observability import telemetry
from serving.config import FailoverConfig, ServiceConfig
from serving.documents.api import (DOCUMENT_ENDPOINTS, DOCUMENT_HEADER, DocumentRoutes,
                                   build_documents)
from serving.documents.metrics import DocumentMetrics
from serving.failover.failover import Failover
from serving.ingress.admission_limits import AdmissionLimitMiddleware
from serving.ingress.auth import PUBLIC_PATHS, TenantMiddleware, openai_error
from serving.observability.route_accuracy import RouteAccuracy
from serving.ingress.forwarding import refuse_unforwardable
from serving.ingress.limits import BodyLimitMiddleware
from serving.prefixes.api import PREFIX_ENDPOINTS, PrefixRoutes, observe_response
from serving.prefixes.backend import build_registry, ingress_args
from serving.prefixes.metrics import PrefixMetrics
from serving.prefixes.registry import PrefixError
from serving.routing.prewarm import Prewarmer
from serving.routing.prompt_tokens import load_tokenizer
# Upstream's request bodies, with validation that cannot crash (serving/ingress/request_models.py).
from serving.ingress.chat_templates import ChatTemplateGuard, TemplateRefused
from serving.ingress.request_models import ChatCompletionRequest, CompletionRequest
from serving.routing.metrics import REPLICAS_WANTED, PrewarmMetrics
from serving.routing.registry import local_routers
from serving.tenants.identity import Tenants, tenant_of
from serving.observability.tracing import TracingMiddleware

logger = logging.getLogger("ray.serve")



def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "Request body is not valid JSON.", None
    msg = first.get("msg", "invalid value")
    return (f"Invalid value for '{param}': {msg}" if param else f"Invalid request: {msg}"), param


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    return openai_error(400, message, param=param, code="invalid_request")


# Codes OpenAI's API uses for these statuses, so SDKs branch on them the same way.
_CODE_BY_STATUS = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found",
                   408: "timeout", 413: "request_too_large", 429: "rate_limit_exceeded"}


def _client_status(status: int) -> int:
    """422 (FastAPI's and upstream's "unprocessable") is 400 here, as for every other
    invalid request: OpenAI's API answers 400, and the OpenAPI document says so."""
    return 400 if status == 422 else status


async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    exc.status_code = _client_status(exc.status_code)
    message = str(exc.detail)
    code = _CODE_BY_STATUS.get(exc.status_code)
    if exc.status_code == 400 and "parsing the body" in message:
        # FastAPI's wording for a body that is not UTF-8 (or not decodable at all),
        # and for JSON nested past the parser's recursion limit.
        message = ("Request body is nested too deeply to parse as JSON."
                   if isinstance(exc.__cause__, RecursionError) else
                   "Request body could not be decoded: send UTF-8 encoded JSON.")
    if exc.status_code == 404 and "model" in message.lower():
        code = "model_not_found"
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return openai_error(exc.status_code, message, type_=type_, code=code)


async def _on_openai_exception(request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    status = _client_status(int(exc.status_code))
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return openai_error(status, exc.message, type_=type_, code=_CODE_BY_STATUS.get(status))


async def _on_prefix_error(request: Request, exc: PrefixError) -> JSONResponse:
    type_ = "invalid_request_error" if exc.status < 500 else "server_error"
    return openai_error(exc.status, exc.message, type_=type_, code=exc.code, param=exc.param)


async def _on_template_refused(request: Request, exc: TemplateRefused) -> JSONResponse:
    # Before any routing: the router would otherwise render the client's template.
    return openai_error(400, exc.refusal.message, code="unsupported_parameter",
                        param=exc.refusal.param)


async def _on_engine_client_error(request: Request, exc: Exception) -> JSONResponse:
    # vLLM's own request-validation errors (raised in the replica, re-raised here).
    message = str(getattr(exc, "cause", None) or exc).strip() or type(exc).__name__
    return openai_error(400, message, code="invalid_request")


def build_fastapi_app(config: ServiceConfig) -> FastAPI:
    """Upstream's app (its middleware stack, metrics, request ids) plus ours."""
    from serving.ray_private import VLLM_CLIENT_ERRORS, init_upstream_app

    app = init_upstream_app()
    # Handlers registered here run inside upstream's catch-all middleware, so the
    # client-error cases get a clean OpenAI body instead of its concatenated message.
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(OpenAIHTTPException, _on_openai_exception)
    app.add_exception_handler(TemplateRefused, _on_template_refused)
    app.add_exception_handler(PrefixError, _on_prefix_error)
    for exc_type in VLLM_CLIENT_ERRORS:
        app.add_exception_handler(exc_type, _on_engine_client_error)
    tenants = Tenants.from_config(config)
    # Input limits and the API description (serving/ingress/limits.py, serving/ingress/openapi.py).
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.server.max_body_bytes,
                       max_json_depth=config.server.max_json_depth)
    api_schema.install(app, public_paths=PUBLIC_PATHS, authenticated=tenants.authenticated,
                       max_body_bytes=config.server.max_body_bytes)
    # Inside the tenant middleware (it limits by tenant), outside the body limit: a
    # refused request is answered before its body is read
    # (serving/ingress/admission_limits.py).
    app.add_middleware(AdmissionLimitMiddleware, public_paths=PUBLIC_PATHS,
                       max_concurrent_requests=config.server.max_concurrent_requests)
    # Outside the body limit: a caller without a key learns nothing, not even the limit.
    app.add_middleware(TenantMiddleware, tenants=tenants,
                       metrics_token=config.server.resolved_metrics_token())
    if config.tracing.enabled:
        # Added last, so outermost: rejected (401) requests are traced too. Absent
        # when tracing is off, so it costs nothing then.
        # Its route log is the serving process's own, found when the stack is built
        # there (the app is pickled from the CLI to the ingress replica).
        app.add_middleware(TracingMiddleware, settings=config.tracing)
    return app


class CacheRouteIngress(DocumentRoutes, PrefixRoutes, OpenAiIngress):
    def __init__(self, llm_deployments: dict, model_cards: dict, *, lora_paths=None,
                 app_name: str, llm_deployment: str, num_replicas: int,
                 prefixes: dict[str, Any], failover: dict[str, Any] | None = None,
                 replicate_before_spill: bool = False) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        failover_config = FailoverConfig.model_validate(failover or {})
        # What this process's router tells the ingress (serving/routing/registry.py).
        routers = local_routers()
        self._failover = (Failover(failover_config, attempts=routers.attempts)
                          if failover_config.enabled else None)
        self._accuracy = RouteAccuracy(routers.predictions)
        self._app_name = app_name
        # Which template inputs a client may send (serving/ingress/chat_templates.py):
        # checked on every request that a router or engine renders a template for.
        self._templates = ChatTemplateGuard.for_tokenizer(
            load_tokenizer(prefixes["tokenizer_path"]))
        self._llm_deployment = llm_deployment
        self._num_replicas = num_replicas
        REPLICAS_WANTED.set(num_replicas)
        self._prefix_registry = build_registry(
            prefixes, models=frozenset(model_cards), deployment=llm_deployment,
            send_chat=lambda body: self._get_response(body=body, call_method="chat"),
            routers=routers,
            metrics=PrefixMetrics())
        self._documents = build_documents(
            prefixes, models=frozenset(model_cards), registry=self._prefix_registry,
            metrics=DocumentMetrics())
        # Scale-up prewarm and replication ahead of a spill (serving/routing/prewarm.py): the
        # router of this process's handle names the replicas and prefixes, this ingress
        # sends the prefills.
        self._prewarmer = (
            Prewarmer(model=next(iter(model_cards)),
                      router=lambda: routers.router_of(llm_deployment), send=self._send_prewarm,
                      metrics=PrewarmMetrics())
            if (failover_config.prewarm_on_scale_up or replicate_before_spill) and model_cards
            else None)

    def _send_prewarm(self, body: dict[str, Any]):
        # Straight to the deployment, past failover: a prewarm is pinned to one replica.
        return super()._get_response(body=CompletionRequest.model_validate(body),
                                     call_method="completions")

    async def _get_response(self, *, body: Any, call_method: str,
                            raw_request: Request | None = None):
        if raw_request is not None:
            # A client's request (every upstream route passes its raw request; the
            # registry's and the router's prewarms carry their owner's salt already).
            salt_for_tenant(body, raw_request)
        # Every chat and completion call to the engines, the prefix registry's
        # included, goes through failover (serving/failover/failover.py), and each of
        # its attempts past the routing-accuracy counters
        # (serving/observability/route_accuracy.py).
        generates = call_method in ("chat", "completions")
        key = serve_request_id() if generates else ""

        def send(attempt_body: Any):
            items = super(CacheRouteIngress, self)._get_response(
                body=attempt_body, call_method=call_method, raw_request=raw_request)
            return self._accuracy.observe(items, key) if key else items

        try:
            if self._failover is None or not generates:
                stream = send(body)
            else:
                stream = self._failover.run(body, call_method, send, request_key=key)
            async for item in refuse_unforwardable(stream):
                yield item
        finally:
            self._accuracy.end(key)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._templates.check(body)
        document = request.headers.get(DOCUMENT_HEADER)
        if document is not None:  # a chat about an uploaded document
            return await self.chat_about_document(document, body, request)
        return await self.send_chat(body, request)

    async def send_chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        # Which registered prefix the request starts with, and (from the engine's
        # usage report) whether it hit; the response passes through unchanged. The
        # salt is the one `_get_response` will serve it under: only the tenant's own
        # prefixes can match.
        salt = tenant_of(request).cache_salt(body.cache_salt)
        use = self._prefix_registry.match(body.model, body.messages, salt)
        response = await super().chat(body, request)
        return observe_response(self._prefix_registry, use, response) if use else response

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Response:
        # An embeddings request may be a chat, rendered with a template like one.
        self._templates.check(body)
        return await super().embeddings(body, request)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        # Only the body's type differs from upstream's route (serving/ingress/request_models.py).
        return await super().completions(body, request)

    async def check_health(self) -> None:
        # Serve calls this every few seconds on the request loop: it (re)starts the
        # registry's sweep, so a restarted ingress rewarms without waiting for traffic.
        self._prefix_registry.ensure_sweeping()
        if self._prewarmer is not None:
            self._prewarmer.ensure_running()
        try:  # stale documents leave, and the router forgets their blocks
            await self._documents.sweep()
        except Exception:  # a failed sweep must not mark the ingress unhealthy
            logger.exception("cacheroute: document sweep failed")
        await super().check_health()

    async def readiness(self) -> dict[str, Any]:
        # serve.status() is a blocking call to the controller: keep it off the loop.
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self._app_name)
        running = 0
        if app is not None and self._llm_deployment in app.deployments:
            states = app.deployments[self._llm_deployment].replica_states
            running = int(states.get("RUNNING", 0))
        ready = (app is not None and app.status == ApplicationStatus.RUNNING
                 and running >= self._num_replicas)
        return {"ready": ready, "replicas_ready": running, "replicas_wanted": self._num_replicas}

    async def ready(self) -> JSONResponse:
        info = await self.readiness()
        return JSONResponse(status_code=200 if info["ready"] else 503,
                            content={"status": "ready" if info["ready"] else "starting", **info})

    async def health(self) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics(self) -> Response:
        return Response(telemetry.render(), media_type=telemetry.CONTENT_TYPE)


def salt_for_tenant(body: Any, request: Request) -> None:
    """Serve ``body`` under its tenant's cache salt, the client's own ``cache_salt``
    appended. Request models without the field accept it as an extra (upstream's
    allow extras); the router reads it either way (serving/routing/route_requests.py)."""
    body.cache_salt = tenant_of(request).cache_salt(getattr(body, "cache_salt", None))


def _endpoint_map() -> dict:
    from serving.ray_private import DEFAULT_ENDPOINTS

    return {
        **DEFAULT_ENDPOINTS,
        "ready": lambda app: app.get("/ready"),
        "health": lambda app: app.get("/health"),
        "metrics": lambda app: app.get("/metrics"),
        **PREFIX_ENDPOINTS,
        **DOCUMENT_ENDPOINTS,
    }


def make_ingress_deployment(*, config: ServiceConfig, llm_config: LLMConfig,
                            server: serve.Application, ingress_cls: type,
                            llm_deployment_name: str, app_name: str,
                            name: str) -> serve.Application:
    from serving.ray_private import to_model_metadata

    cls = make_fastapi_ingress(ingress_cls, endpoint_map=_endpoint_map(),
                               app=build_fastapi_app(config))
    options = ingress_cls.get_deployment_options([llm_config])
    options.update(
        name=name,
        # The ingress only parses and forwards; it must never block replica placement.
        ray_actor_options={"num_cpus": 0},
    )
    return serve.deployment(cls, **options).bind(
        llm_deployments={llm_config.model_id: server},
        model_cards={llm_config.model_id: to_model_metadata(llm_config.model_id, llm_config)},
        lora_paths={},
        app_name=app_name,
        llm_deployment=llm_deployment_name,
        num_replicas=config.replicas,
        prefixes=ingress_args(
            config, config.model.tokenizer or llm_config.model_loading_config.model_source),
        failover=config.failover.model_dump(),
        replicate_before_spill=(config.routing.policy == "cacheroute"
                                and config.routing.replicate_before_spill),
    )

