"""Request tracing with OpenTelemetry: one trace per request, ingress to engine.

The spans of one completion, all in the client's trace when it sends a W3C
`traceparent` (else each request starts its own trace):

    POST /v1/chat/completions   SERVER, ingress     TracingMiddleware
    |- cacheroute.route         routing decision    RouteLog, written by the router
    '- llm.generate             SERVER, replica     GenerationTracer (cached tokens, TTFT)
       '- llm_request           vLLM's engine span  (only with `tracing.otlp_endpoint`)

How the context travels:
- client -> ingress: the middleware extracts `traceparent`/`tracestate` and starts the
  SERVER span. It rewrites those two request headers to name its own span; ray.serve.llm
  copies the request headers into the `raw_request_info` it sends the replica, so the
  replica's span is the ingress span's child.
- replica -> engine: the replica rewrites them again to name `llm.generate`; vLLM reads
  them from the same headers for its `llm_request` span.
- router -> ingress: Serve runs the request router on its own event loop and thread, so
  the ingress span's context never reaches `choose_replicas`. The router records its
  decision in this process's RouteLog (`local_routers().route_log`,
  serving/routing/registry.py) under Serve's internal request id (the proxy assigns
  it; the ingress's handle call carries it in `PendingRequest.metadata`); when the
  response ends, the middleware pops the record and writes `cacheroute.route` with the
  recorded start and end times.

Cost: with `tracing.enabled: false` (the default) nothing is installed: no middleware,
no RouteLog writes, no replica wrapper. Enabled, a request costs three span objects, a
dict insert and a header rewrite (tens of microseconds); export runs in the
BatchSpanProcessor's thread, off the request path.

Each process builds its own TracerProvider rather than the global one: with engine
tracing on, vLLM installs its own provider as the global one in the replica process.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.config import TracingConfig
from serving.observability.route_log import RouteLog, RouteRecord
from serving.observability.usage import Usage, usage_of
from serving.routing.registry import local_routers

T = TypeVar("T")

# Span names.
ROUTE_SPAN = "cacheroute.route"
GENERATE_SPAN = "llm.generate"

# Attribute keys. HTTP ones follow OpenTelemetry's semantic conventions; the rest are
# this project's, each a bounded value (no prompt text, no user data).
ATTR_HTTP_METHOD = "http.request.method"
ATTR_HTTP_ROUTE = "http.route"
ATTR_HTTP_STATUS = "http.response.status_code"
ATTR_URL_PATH = "url.path"
ATTR_URL_SCHEME = "url.scheme"
ATTR_CLIENT_ADDRESS = "client.address"
ATTR_REPLICA = "cacheroute.replica"
ATTR_OUTCOME = "cacheroute.outcome"
ATTR_MATCHED_BLOCKS = "cacheroute.matched_blocks"
ATTR_TOTAL_BLOCKS = "cacheroute.total_blocks"
ATTR_PROMPT_TOKENS = "cacheroute.prompt_tokens"
ATTR_ROUTE_ATTEMPTS = "cacheroute.route_attempts"
ATTR_STREAM = "cacheroute.stream"
ATTR_TTFT_S = "cacheroute.ttft_s"
ATTR_CACHED_TOKENS = "cacheroute.cached_tokens"
ATTR_CANCELLED = "cacheroute.cancelled"
ATTR_MODEL = "gen_ai.request.model"
ATTR_OPERATION = "gen_ai.operation.name"
ATTR_INPUT_TOKENS = "gen_ai.usage.input_tokens"
ATTR_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ATTR_ERROR_TYPE = "error.type"

# Only the API is traced: probes (/ready, /health) would add a root trace every few
# seconds per load balancer and say nothing about requests.
TRACED_PATH_PREFIX = "/v1/"

# W3C Trace Context only, whatever OTEL_PROPAGATORS says: the contract is the
# `traceparent` header, and vLLM reads exactly these two headers.
_W3C = TraceContextTextMapPropagator()
_W3C_HEADERS = frozenset(_W3C.fields)
_W3C_HEADERS_BYTES = frozenset(h.encode() for h in _W3C_HEADERS)


# --- providers --------------------------------------------------------------------


def build_tracer_provider(settings: TracingConfig, *,
                          exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider for `settings`. Without `exporter`: batched OTLP/HTTP export to
    `settings.otlp_endpoint`. With one (tests: an InMemorySpanExporter): synchronous
    export, so a test sees a span the moment it ends."""
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
        # Parent-based: a client's sampled flag wins, so a trace is kept or dropped whole.
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@functools.cache
def process_tracer_provider(settings: TracingConfig) -> TracerProvider:
    """This process's provider for `settings`, built on first use (in the replica
    process, never in the driver that pickles the app). It flushes at exit."""
    return build_tracer_provider(settings)


# --- routing decisions ------------------------------------------------------------


def route_attributes(record: RouteRecord) -> dict[str, Any]:
    """The `cacheroute.route` span's attributes: what the router decided."""
    return {ATTR_REPLICA: record.replica_id, ATTR_OUTCOME: record.outcome,
            ATTR_MATCHED_BLOCKS: record.matched_blocks, ATTR_TOTAL_BLOCKS: record.total_blocks,
            ATTR_PROMPT_TOKENS: record.prompt_tokens, ATTR_ROUTE_ATTEMPTS: record.attempts}


# --- ingress ----------------------------------------------------------------------


def serve_request_key(scope: Scope) -> str:
    """Serve's internal request id of the request being handled: unique per HTTP
    request (unlike `x-request-id`, which a client may reuse) and the very id the
    ingress's handle call puts in `PendingRequest.metadata.internal_request_id`."""
    from serving.ray_private import serve_request_id

    return serve_request_id()


class TracingMiddleware:
    """ASGI middleware: a SERVER span per API request, its route span, and the W3C
    headers rewritten for the replica. Installed only when tracing is enabled."""

    def __init__(self, app: ASGIApp, *, settings: TracingConfig,
                 tracer_provider: TracerProvider | None = None,
                 route_log: RouteLog | None = None,
                 request_key: Callable[[Scope], str] = serve_request_key) -> None:
        self.app = app
        provider = tracer_provider or process_tracer_provider(settings)
        self._tracer = provider.get_tracer("cacheroute.ingress")
        # None: the RouteLog of the process serving requests, looked up here, when
        # Starlette builds the middleware stack in that process. The app is built in the
        # CLI and pickled to the ingress replica, so an object given at build time would
        # be a copy that the ingress process's router never writes to.
        self._route_log = route_log if route_log is not None else local_routers().route_log
        self._request_key = request_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(TRACED_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        carrier = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in headers if name.lower() in _W3C_HEADERS_BYTES}
        method = scope.get("method", "")
        attributes = {ATTR_HTTP_METHOD: method, ATTR_URL_PATH: scope.get("path", ""),
                      ATTR_URL_SCHEME: scope.get("scheme", "http")}
        if scope.get("client"):
            attributes[ATTR_CLIENT_ADDRESS] = scope["client"][0]
        # Named `{method} {route}` once the route is known; bare method until then, so an
        # unmatched path never becomes a span name (unbounded cardinality).
        span = self._tracer.start_span(method, context=_W3C.extract(carrier),
                                       kind=SpanKind.SERVER, attributes=attributes)
        request_key = self._request_key(scope)
        span_context = trace.set_span_in_context(span)
        outgoing: dict[str, str] = {}
        _W3C.inject(outgoing, context=span_context)
        inner = dict(scope)
        inner["headers"] = [(n, v) for n, v in headers if n.lower() not in _W3C_HEADERS_BYTES]
        inner["headers"] += [(k.encode(), v.encode()) for k, v in outgoing.items()]
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = otel_context.attach(span_context)
        try:
            # Returns after the last body chunk was sent, streamed responses included.
            await self.app(inner, receive, send_observed)
        except BaseException as exc:
            _mark_failed(span, exc)  # keeps the exception's type as the status description
            if not status and not isinstance(exc, asyncio.CancelledError):
                status = 500  # what Starlette's outermost error handler will send
            raise
        else:
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        finally:
            otel_context.detach(token)
            route = getattr(inner.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute(ATTR_HTTP_ROUTE, route)
            if status:
                span.set_attribute(ATTR_HTTP_STATUS, status)
            self._write_route_span(request_key, span_context, span)
            span.end()

    def _write_route_span(self, request_key: str, parent: otel_context.Context,
                          span: Span) -> None:
        record = self._route_log.pop(request_key) if request_key else None
        if record is None or not span.is_recording():
            return
        route = self._tracer.start_span(ROUTE_SPAN, context=parent, start_time=record.start_ns,
                                        attributes=route_attributes(record))
        route.end(end_time=record.end_ns)


# --- replica ----------------------------------------------------------------------


def usage_attributes(usage: Usage) -> dict[str, Any]:
    """The `llm.generate` span's attributes for the response's usage."""
    out: dict[str, Any] = {ATTR_INPUT_TOKENS: usage.prompt_tokens,
                           ATTR_OUTPUT_TOKENS: usage.completion_tokens}
    if usage.cached_tokens is not None:
        out[ATTR_CACHED_TOKENS] = usage.cached_tokens
    return out


def error_of(item: Any) -> str | None:
    """The error type of an error item (ErrorResponse or a streamed error event)."""
    if isinstance(item, list):
        return next((e for e in map(error_of, item) if e), None)
    if isinstance(item, str):
        return "stream_error" if item.startswith('data: {"error"') else None
    error = getattr(item, "error", None)
    if error is None:
        return None
    return str(getattr(error, "type", None) or getattr(error, "code", None) or "error")


class GenerationTracer:
    """Wraps a replica's chat/completions call in an `llm.generate` span.

    TTFT here is the replica's time to its first streamed item (for non-streaming
    requests the engine's `llm_request` span carries vLLM's own TTFT). Cached tokens
    come from the final usage: always on non-streaming responses, and on streamed ones
    when the client asked for `stream_options.include_usage`.
    """

    def __init__(self, tracer: Tracer, *, replica_id: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._tracer = tracer
        self._replica_id = replica_id
        self._clock = clock

    async def traced(self, call: Callable[[Any, Any], Awaitable[AsyncIterator[T]]],
                     request: Any, raw_request_info: Any, *,
                     operation: str) -> AsyncIterator[T]:
        headers = dict(getattr(raw_request_info, "headers", None) or {})
        streaming = bool(getattr(request, "stream", False))
        span = self._tracer.start_span(
            GENERATE_SPAN, context=_W3C.extract({k.lower(): v for k, v in headers.items()}),
            kind=SpanKind.SERVER,
            attributes={ATTR_REPLICA: self._replica_id, ATTR_OPERATION: operation,
                        ATTR_MODEL: str(getattr(request, "model", "")), ATTR_STREAM: streaming})
        started = self._clock()
        # The engine's span is this span's child: same headers, rewritten.
        child = {k: v for k, v in headers.items() if k.lower() not in _W3C_HEADERS}
        _W3C.inject(child, context=trace.set_span_in_context(span))
        try:
            stream = await call(request, _with_headers(raw_request_info, child))
        except BaseException as exc:
            _mark_failed(span, exc)
            span.end()
            raise
        return self._observe(stream, span, started, streaming)

    async def _observe(self, stream: AsyncIterator[T], span: Span, started: float,
                       streaming: bool) -> AsyncIterator[T]:
        usage: Usage | None = None
        first = True
        try:
            async for item in stream:
                if first and streaming:
                    span.set_attribute(ATTR_TTFT_S, self._clock() - started)
                first = False
                usage = usage_of(item) or usage
                error = error_of(item)
                if error:
                    span.set_attribute(ATTR_ERROR_TYPE, error)
                    span.set_status(Status(StatusCode.ERROR))
                yield item
        except BaseException as exc:
            _mark_failed(span, exc)
            raise
        finally:
            if usage is not None:
                span.set_attributes(usage_attributes(usage))
            span.end()
            # Closing this wrapper (Serve does on cancellation) must reach the engine's
            # stream, which aborts the request when closed.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


def _with_headers(raw_request_info: Any, headers: dict[str, str]) -> Any:
    if raw_request_info is None:
        from serving.ray_private import RawRequestInfo

        return RawRequestInfo(headers=headers)
    return replace(raw_request_info, headers=headers)


def _mark_failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        # The caller went away (client disconnect, Serve cancellation): not an error.
        span.set_attribute(ATTR_CANCELLED, True)
    else:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
