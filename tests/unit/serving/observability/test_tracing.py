"""Request tracing (serving/observability/tracing.py): config, the ingress middleware, the route span,
the replica span, OTLP/HTTP export to a loopback receiver, and the hooks it relies on.

Spans go to an InMemorySpanExporter (synchronous, so a span is visible the moment it
ends), except in the export test, which posts real OTLP protobuf to `OtlpSink`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.responses import JSONResponse, StreamingResponse

from router import Decision, Outcome
from serving.config import ConfigError, ServiceConfig, TracingConfig, validate_config
from serving.observability.tracing import (
    ATTR_CACHED_TOKENS,
    ATTR_CANCELLED,
    ATTR_ERROR_TYPE,
    ATTR_HTTP_ROUTE,
    ATTR_HTTP_STATUS,
    ATTR_INPUT_TOKENS,
    ATTR_MATCHED_BLOCKS,
    ATTR_OUTCOME,
    ATTR_OUTPUT_TOKENS,
    ATTR_PROMPT_TOKENS,
    ATTR_REPLICA,
    ATTR_ROUTE_ATTEMPTS,
    ATTR_STREAM,
    ATTR_TOTAL_BLOCKS,
    ATTR_TTFT_S,
    GENERATE_SPAN,
    ROUTE_SPAN,
    GenerationTracer,
    RouteLog,
    TracingMiddleware,
    build_tracer_provider,
    serve_request_key,
)
from tests.otlp_sink import OtlpSink

CLIENT_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN_ID = 0xB7AD6B7169203331
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"
REQUEST_ID_HEADER = "x-test-request-id"


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str) -> tuple[int, int]:
    _, trace_id, span_id, _ = value.split("-")
    return int(trace_id, 16), int(span_id, 16)


def make_decision(replica: str = "replica-1", outcome: Outcome = Outcome.OWNER_HIT,
                  matched: int = 3, total: int = 5) -> Decision:
    return Decision(replica_id=replica, outcome=outcome, matched_blocks=matched,
                    total_blocks=total, ranked=(replica, "replica-2"))


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    matches = [s for s in spans if s.name == name]
    assert len(matches) == 1, [s.name for s in spans]
    return matches[0]


# --- config -------------------------------------------------------------------------


def test_tracing_is_off_by_default() -> None:
    tracing = ServiceConfig().tracing
    assert tracing == TracingConfig(enabled=False, otlp_endpoint=None,
                                    service_name="cacheroute", sample_ratio=1.0)


def test_tracing_section_is_read() -> None:
    config = validate_config({"tracing": {"enabled": True, "sample_ratio": 0.25,
                                          "otlp_endpoint": "https://otel.example:4318/v1/traces",
                                          "service_name": "router-eu"}})
    assert config.tracing.enabled and config.tracing.sample_ratio == 0.25
    assert config.tracing.otlp_endpoint == "https://otel.example:4318/v1/traces"


@pytest.mark.parametrize(("tracing", "message"), [
    ({"sample_ratio": 1.5}, "tracing.sample_ratio: Input should be less than or equal to 1"),
    ({"sample_ratio": -0.1}, "tracing.sample_ratio: Input should be greater than or equal to 0"),
    ({"otlp_endpoint": "otel:4318"}, "tracing.otlp_endpoint: Value error, must be an http://"),
    ({"otlp_endpoint": "grpc://otel:4317"}, "tracing.otlp_endpoint: Value error, must be an"),
    ({"otlp_endpoint": "http://"}, "tracing.otlp_endpoint: Value error, must be an http://"),
    ({"service_name": ""}, "tracing.service_name: String should have at least 1 character"),
    ({"exporter": "otlp"}, "tracing.exporter: unknown field"),
])
def test_bad_tracing_config_is_one_line(tracing: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"tracing": tracing})
    assert str(info.value).startswith(f"config: {message}"), str(info.value)
    assert "\n" not in str(info.value)


# --- app wiring ---------------------------------------------------------------------


def test_tracing_off_installs_nothing() -> None:
    from serving.app import build_llm_config
    from serving.ingress.ingress import build_fastapi_app

    config = validate_config({"server": {"api_keys": ["k"]}})
    app = build_fastapi_app(config)
    assert TracingMiddleware not in [m.cls for m in app.user_middleware]
    llm = build_llm_config(config, "/m")
    assert llm.experimental_configs["cacheroute_tracing"] is None
    assert "otlp_traces_endpoint" not in llm.engine_kwargs
    assert not any(k.startswith("OTEL_") for k in llm.runtime_env["env_vars"])


def test_tracing_on_installs_the_outermost_middleware_and_the_replica_settings() -> None:
    from serving.app import build_llm_config
    from serving.ingress.ingress import ApiKeyMiddleware, build_fastapi_app

    config = validate_config({"server": {"api_keys": ["k"]}, "tracing": {"enabled": True}})
    app = build_fastapi_app(config)
    classes = [m.cls for m in app.user_middleware]
    # Outermost (first): requests the key check rejects are traced too.
    assert classes[0] is TracingMiddleware and ApiKeyMiddleware in classes
    # The route log the process's routers write (serving/routing/registry.py).
    from serving.routing.registry import local_routers

    assert app.user_middleware[0].kwargs == {"settings": config.tracing,
                                             "route_log": local_routers().route_log}
    llm = build_llm_config(config, "/m")
    assert TracingConfig.model_validate(llm.experimental_configs["cacheroute_tracing"]) == (
        config.tracing)
    # No endpoint: vLLM's engine spans stay off (vLLM has no default endpoint).
    assert "otlp_traces_endpoint" not in llm.engine_kwargs


def test_an_endpoint_turns_on_the_engine_spans_over_otlp_http() -> None:
    from serving.app import build_llm_config

    endpoint = "http://collector:4318/v1/traces"
    config = validate_config({"tracing": {"enabled": True, "otlp_endpoint": endpoint,
                                          "service_name": "cr"}})
    llm = build_llm_config(config, "/m")
    assert llm.engine_kwargs["otlp_traces_endpoint"] == endpoint
    env = llm.runtime_env["env_vars"]
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_SERVICE_NAME"] == "cr"


# --- ingress middleware -------------------------------------------------------------


@dataclass
class Ingress:
    """A small OpenAI-shaped app behind TracingMiddleware, spans in memory."""

    client: httpx.AsyncClient
    exporter: InMemorySpanExporter
    route_log: RouteLog
    seen_headers: list[dict[str, str]]
    last_chunk_ns: list[int]


def header_request_key(scope: dict) -> str:
    return dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode()


def make_ingress(settings: TracingConfig | None = None, *,
                 provider: Any = None) -> Ingress:
    settings = settings or TracingConfig(enabled=True)
    exporter = InMemorySpanExporter()
    route_log = RouteLog()
    seen: list[dict[str, str]] = []
    last_chunk_ns: list[int] = []
    app = FastAPI()

    def route_like_the_router(request: Request) -> None:
        # What CacheRouteRequestRouter does on Serve's router loop for this request.
        route_log.record(request.headers.get(REQUEST_ID_HEADER, ""), make_decision(),
                         prompt_tokens=700, elapsed_s=0.002)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        route_like_the_router(request)
        return JSONResponse({"object": "chat.completion"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        seen.append(dict(request.headers))
        route_like_the_router(request)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(0.02)
                last_chunk_ns.append(time.time_ns())
                yield f"data: {i}\n\n".encode()
        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/v1/broken")
    async def broken() -> None:
        raise RuntimeError("engine fell over")

    @app.post("/v1/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({"error": {"message": "no replica"}}, status_code=503)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    app.add_middleware(TracingMiddleware, settings=settings,
                       tracer_provider=provider or build_tracer_provider(settings,
                                                                         exporter=exporter),
                       route_log=route_log, request_key=header_request_key)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://ingress")
    return Ingress(client, exporter, route_log, seen, last_chunk_ns)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_client_traceparent_makes_the_server_span_its_child() -> None:
    ingress = make_ingress()
    resp = run(ingress.client.post("/v1/chat/completions", json={}, headers={
        "traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=1"}))
    assert resp.status_code == 200
    span = by_name(ingress.exporter.get_finished_spans(), "POST /v1/chat/completions")
    assert span.kind == SpanKind.SERVER
    assert span.context.trace_id == CLIENT_TRACE_ID
    assert span.parent is not None and span.parent.span_id == CLIENT_SPAN_ID
    assert span.parent.is_remote
    assert span.attributes[ATTR_HTTP_STATUS] == 200
    assert span.attributes[ATTR_HTTP_ROUTE] == "/v1/chat/completions"
    assert span.attributes["http.request.method"] == "POST"


def test_downstream_headers_name_the_server_span() -> None:
    # ray.serve.llm forwards these request headers to the replica (raw_request_info).
    ingress = make_ingress()
    run(ingress.client.post("/v1/chat/completions", json={}, headers={
        "traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=1", "x-other": "kept"}))
    span = by_name(ingress.exporter.get_finished_spans(), "POST /v1/chat/completions")
    (headers,) = ingress.seen_headers
    assert parse_traceparent(headers["traceparent"]) == (CLIENT_TRACE_ID, span.context.span_id)
    assert headers["tracestate"] == "vendor=1"
    assert headers["x-other"] == "kept"


def test_without_a_traceparent_each_request_starts_a_trace() -> None:
    ingress = make_ingress()
    run(ingress.client.post("/v1/chat/completions", json={}))
    run(ingress.client.post("/v1/chat/completions", json={}))
    spans = ingress.exporter.get_finished_spans()
    assert len(spans) == 2 and all(s.parent is None for s in spans)
    assert spans[0].context.trace_id != spans[1].context.trace_id


def test_a_streamed_response_ends_the_span_after_its_last_chunk() -> None:
    ingress = make_ingress()

    async def stream() -> list[str]:
        async with ingress.client.stream("POST", "/v1/completions", json={},
                                         headers={"traceparent": CLIENT_TRACEPARENT}) as resp:
            return [line async for line in resp.aiter_lines() if line]
    assert run(stream()) == ["data: 0", "data: 1", "data: 2"]
    span = by_name(ingress.exporter.get_finished_spans(), "POST /v1/completions")
    assert span.context.trace_id == CLIENT_TRACE_ID
    assert span.end_time >= ingress.last_chunk_ns[-1]
    assert span.end_time - span.start_time >= 3 * 0.02 * 1e9 * 0.9


def test_the_route_span_is_written_from_the_recorded_decision() -> None:
    ingress = make_ingress()
    run(ingress.client.post("/v1/chat/completions", json={}, headers={
        "traceparent": CLIENT_TRACEPARENT, REQUEST_ID_HEADER: "req-1"}))
    spans = ingress.exporter.get_finished_spans()
    server = by_name(spans, "POST /v1/chat/completions")
    route = by_name(spans, ROUTE_SPAN)
    assert route.context.trace_id == CLIENT_TRACE_ID
    assert route.parent is not None and route.parent.span_id == server.context.span_id
    assert dict(route.attributes) == {
        ATTR_REPLICA: "replica-1", ATTR_OUTCOME: "owner_hit", ATTR_MATCHED_BLOCKS: 3,
        ATTR_TOTAL_BLOCKS: 5, ATTR_PROMPT_TOKENS: 700, ATTR_ROUTE_ATTEMPTS: 1}
    # The recorded bounds: 2 ms ending at the decision, inside the server span.
    assert route.end_time - route.start_time == 2_000_000
    assert server.start_time <= route.start_time + 2_000_000 and route.end_time <= server.end_time
    assert len(ingress.route_log) == 0  # popped, not left to the bound


def test_no_record_no_route_span() -> None:
    ingress = make_ingress()
    run(ingress.client.post("/v1/chat/completions", json={}))  # no request id: no record
    assert [s.name for s in ingress.exporter.get_finished_spans()] == [
        "POST /v1/chat/completions"]


def test_probes_are_not_traced() -> None:
    ingress = make_ingress()
    assert run(ingress.client.get("/health")).status_code == 200
    assert ingress.exporter.get_finished_spans() == ()


def test_an_exception_marks_the_span_as_error() -> None:
    ingress = make_ingress()
    assert run(ingress.client.post("/v1/broken")).status_code == 500
    span = by_name(ingress.exporter.get_finished_spans(), "POST /v1/broken")
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "RuntimeError"
    assert [e.name for e in span.events] == ["exception"]
    assert span.attributes[ATTR_HTTP_STATUS] == 500


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v1/unavailable", 503, StatusCode.ERROR),
    ("/v1/chat/completions", 200, StatusCode.UNSET),
])
def test_a_5xx_response_marks_the_span_as_error(path: str, status: int,
                                                code: StatusCode) -> None:
    ingress = make_ingress()
    assert run(ingress.client.post(path, json={})).status_code == status
    (span,) = ingress.exporter.get_finished_spans()
    assert span.status.status_code == code
    assert span.attributes[ATTR_HTTP_STATUS] == status


def test_an_unmatched_path_does_not_become_a_span_name() -> None:
    ingress = make_ingress()
    assert run(ingress.client.post("/v1/no/such/path/12345")).status_code == 404
    (span,) = ingress.exporter.get_finished_spans()
    assert span.name == "POST"
    assert span.attributes["url.path"] == "/v1/no/such/path/12345"


def test_sampling_is_parent_based() -> None:
    ingress = make_ingress(TracingConfig(enabled=True, sample_ratio=0.0))
    run(ingress.client.post("/v1/chat/completions", json={}, headers={REQUEST_ID_HEADER: "a"}))
    assert ingress.exporter.get_finished_spans() == ()
    assert len(ingress.route_log) == 0  # the record is dropped even when not sampled
    # A client's sampled trace is kept whatever the ratio...
    run(ingress.client.post("/v1/chat/completions", json={}, headers={
        "traceparent": CLIENT_TRACEPARENT, REQUEST_ID_HEADER: "b"}))
    assert {s.name for s in ingress.exporter.get_finished_spans()} == {
        "POST /v1/chat/completions", ROUTE_SPAN}
    # ...and its unsampled one is dropped, the flag passed on downstream.
    ingress.exporter.clear()
    run(ingress.client.post("/v1/chat/completions", json={}, headers={
        "traceparent": traceparent(CLIENT_TRACE_ID, CLIENT_SPAN_ID, sampled=False)}))
    assert ingress.exporter.get_finished_spans() == ()
    assert ingress.seen_headers[-1]["traceparent"].endswith("-00")


# --- route log ----------------------------------------------------------------------


class FakeClock:
    def __init__(self, now_ns: int = 1_000_000_000) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def test_route_log_pops_what_was_recorded() -> None:
    clock = FakeClock()
    log = RouteLog(clock_ns=clock)
    log.record("r1", make_decision(outcome=Outcome.SPILL, matched=0), prompt_tokens=40,
               elapsed_s=0.001)
    record = log.pop("r1")
    assert record is not None
    assert (record.start_ns, record.end_ns) == (clock.now_ns - 1_000_000, clock.now_ns)
    assert (record.replica_id, record.outcome, record.matched_blocks) == ("replica-1", "spill", 0)
    assert log.pop("r1") is None


def test_a_repeated_decision_keeps_the_first_start_and_counts_attempts() -> None:
    # Serve asks the router again while every ranked replica is full.
    clock = FakeClock()
    log = RouteLog(clock_ns=clock)
    log.record("r1", make_decision("replica-1"), prompt_tokens=40, elapsed_s=0.001)
    first_start = clock.now_ns - 1_000_000
    clock.now_ns += 50_000_000
    log.record("r1", make_decision("replica-2"), prompt_tokens=40, elapsed_s=0.001)
    record = log.pop("r1")
    assert record is not None
    assert (record.start_ns, record.end_ns) == (first_start, clock.now_ns)
    assert (record.replica_id, record.attempts) == ("replica-2", 2)


def test_route_log_is_bounded_oldest_out_first() -> None:
    log = RouteLog(max_entries=2)
    for key in ("a", "b", "c"):
        log.record(key, make_decision(), prompt_tokens=1, elapsed_s=0.0)
    assert len(log) == 2
    assert log.pop("a") is None
    assert log.pop("b") is not None and log.pop("c") is not None


def test_route_log_ignores_requests_without_an_id() -> None:
    log = RouteLog()
    log.record("", make_decision(), prompt_tokens=1, elapsed_s=0.0)
    assert len(log) == 0
    with pytest.raises(ValueError):
        RouteLog(max_entries=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serving.models.default import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("enabled", [True, False])
def test_the_router_records_its_decision_under_the_internal_request_id(
        tiny_model: Path, enabled: bool) -> None:
    from ray.serve._private.common import (
        DeploymentHandleSource,
        DeploymentID,
        RequestMetadata,
    )
    from ray.serve._private.request_router.common import PendingRequest
    from ray.serve._private.test_utils import FakeRunningReplica
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serving.routing.cacheroute import CacheRouteRequestRouter
    from serving.routing.registry import local_routers

    config = ServiceConfig.model_validate({"engine": {"block_size": 16},
                                           "tracing": {"enabled": enabled}})

    async def route() -> str:
        router = CacheRouteRequestRouter(deployment_id=DeploymentID(name="LLMServer:m"),
                                         handle_source=DeploymentHandleSource.UNKNOWN,
                                         use_replica_queue_len_cache=True)
        router.initialize_state(config_json=config.model_dump_json(),
                                tokenizer_path=str(tiny_model))
        router.update_replicas([FakeRunningReplica(f"replica-{i}") for i in range(3)])
        body = ChatCompletionRequest(model="m", max_tokens=4, messages=[
            {"role": "user", "content": "Tell me about the ring. " * 20}])
        pending = PendingRequest(args=[body], kwargs={}, metadata=RequestMetadata(
            request_id="client-id", internal_request_id=f"internal-{enabled}"))
        tiers = await router.choose_replicas(list(router.curr_replicas.values()), pending)
        return tiers[0][0].replica_id.unique_id

    chosen = asyncio.run(route())
    # The router's record reaches the ingress through this process's LocalRouters.
    record = local_routers().route_log.pop(f"internal-{enabled}")
    if not enabled:
        assert record is None
        return
    assert record is not None and record.replica_id == chosen
    assert record.prompt_tokens > 16 and record.total_blocks >= 1
    assert record.outcome in {o.value for o in Outcome}
    assert local_routers().route_log.pop("client-id") is None


# --- replica span -------------------------------------------------------------------


@dataclass(frozen=True)
class FakeRawRequestInfo:
    headers: dict[str, str]


class FakeEngineCall:
    """Stands for LLMServer.chat: records what it was called with, yields `items`."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.raw_request_info: Any = None
        self.closed = False

    async def __call__(self, request: Any, raw_request_info: Any) -> AsyncIterator[Any]:
        self.raw_request_info = raw_request_info

        async def stream() -> AsyncIterator[Any]:
            try:
                for item in self.items:
                    yield item
            finally:
                self.closed = True
        return stream()


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


STREAMED = [
    [sse('{"choices":[{"delta":{"role":"assistant"}}],"usage":null}')],
    [sse('{"choices":[{"delta":{"content":"Hi"}}],"usage":null}'),
     sse('{"choices":[],"usage":{"prompt_tokens":300,"completion_tokens":2,'
         '"total_tokens":302,"prompt_tokens_details":{"cached_tokens":256}}}'),
     "data: [DONE]\n\n"],
]


def make_generation_tracer(clock_values: list[float] | None = None
                           ) -> tuple[GenerationTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider(TracingConfig(enabled=True), exporter=exporter)
    clock = iter(clock_values or [10.0, 10.25]).__next__
    return GenerationTracer(provider.get_tracer("test"), replica_id="replica-7",
                            clock=clock), exporter


async def drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def test_streamed_generation_span_has_ttft_cached_tokens_and_the_ingress_parent() -> None:
    tracer, exporter = make_generation_tracer([10.0, 10.25])
    call = FakeEngineCall(STREAMED)
    ingress_span_id = 0x1111222233334444
    raw = FakeRawRequestInfo(headers={
        "traceparent": traceparent(CLIENT_TRACE_ID, ingress_span_id), "x-request-id": "r"})
    request = SimpleNamespace(model="smollm2", stream=True)

    async def go() -> list[Any]:
        return await drain(await tracer.traced(call, request, raw, operation="chat"))
    assert run(go()) == STREAMED  # items pass through untouched
    span = by_name(exporter.get_finished_spans(), GENERATE_SPAN)
    assert span.kind == SpanKind.SERVER
    assert span.context.trace_id == CLIENT_TRACE_ID
    assert span.parent is not None and span.parent.span_id == ingress_span_id
    assert span.attributes[ATTR_REPLICA] == "replica-7"
    assert span.attributes[ATTR_STREAM] is True
    assert span.attributes[ATTR_TTFT_S] == 0.25
    assert span.attributes[ATTR_CACHED_TOKENS] == 256
    assert (span.attributes[ATTR_INPUT_TOKENS], span.attributes[ATTR_OUTPUT_TOKENS]) == (300, 2)
    assert span.status.status_code == StatusCode.UNSET
    # The engine gets the same headers, its parent now this span (vLLM's llm_request).
    assert call.raw_request_info.headers["x-request-id"] == "r"
    assert parse_traceparent(call.raw_request_info.headers["traceparent"]) == (
        CLIENT_TRACE_ID, span.context.span_id)
    assert raw.headers["traceparent"].startswith(f"00-{CLIENT_TRACE_ID:032x}-1111")  # a copy


def test_non_streamed_generation_span_has_cached_tokens_and_no_ttft() -> None:
    tracer, exporter = make_generation_tracer()
    usage = SimpleNamespace(prompt_tokens=1300, completion_tokens=4,
                            prompt_tokens_details=SimpleNamespace(cached_tokens=1280))
    call = FakeEngineCall([SimpleNamespace(usage=usage, error=None)])
    request = SimpleNamespace(model="m", stream=False)
    run(drain_traced(tracer, call, request, FakeRawRequestInfo(headers={})))
    span = by_name(exporter.get_finished_spans(), GENERATE_SPAN)
    assert span.parent is None  # no traceparent: a root span
    assert span.attributes[ATTR_CACHED_TOKENS] == 1280
    assert ATTR_TTFT_S not in span.attributes


async def drain_traced(tracer: GenerationTracer, call: FakeEngineCall, request: Any,
                       raw: Any) -> list[Any]:
    return await drain(await tracer.traced(call, request, raw, operation="chat"))


def test_an_error_response_marks_the_generation_span() -> None:
    tracer, exporter = make_generation_tracer()
    error = SimpleNamespace(error=SimpleNamespace(type="BadRequestError", code=400,
                                                  message="too long"))
    run(drain_traced(tracer, FakeEngineCall([error]), SimpleNamespace(model="m", stream=False),
                     FakeRawRequestInfo(headers={})))
    span = by_name(exporter.get_finished_spans(), GENERATE_SPAN)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes[ATTR_ERROR_TYPE] == "BadRequestError"


def test_closing_the_stream_early_ends_the_span_and_closes_the_engine_stream() -> None:
    tracer, exporter = make_generation_tracer()
    call = FakeEngineCall(STREAMED)

    async def first_then_close() -> None:
        stream = await tracer.traced(call, SimpleNamespace(model="m", stream=True),
                                     FakeRawRequestInfo(headers={}), operation="chat")
        await stream.__anext__()
        await stream.aclose()  # what Serve does when the client disconnects
    run(first_then_close())
    span = by_name(exporter.get_finished_spans(), GENERATE_SPAN)
    assert span.attributes[ATTR_CANCELLED] is True
    assert span.status.status_code == StatusCode.UNSET
    assert call.closed


def test_without_raw_request_info_the_engine_still_gets_the_traceparent() -> None:
    tracer, exporter = make_generation_tracer()
    call = FakeEngineCall([])
    run(drain_traced(tracer, call, SimpleNamespace(model="m", stream=False), None))
    span = by_name(exporter.get_finished_spans(), GENERATE_SPAN)
    assert parse_traceparent(call.raw_request_info.headers["traceparent"])[1] == (
        span.context.span_id)


# --- OTLP/HTTP export ---------------------------------------------------------------


def test_otlp_http_exporter_posts_the_spans_to_the_collector() -> None:
    with OtlpSink() as sink:
        settings = TracingConfig(enabled=True, otlp_endpoint=sink.endpoint,
                                 service_name="cacheroute-test")
        provider = build_tracer_provider(settings)  # the production path: batched OTLP/HTTP
        try:
            ingress = make_ingress(settings, provider=provider)
            run(ingress.client.post("/v1/chat/completions", json={}, headers={
                "traceparent": CLIENT_TRACEPARENT, REQUEST_ID_HEADER: "req-9"}))
            assert provider.force_flush(timeout_millis=10_000)
            spans = sink.wait_for(lambda s: len(s) >= 2, timeout_s=10)
        finally:
            provider.shutdown()
    assert sink.requests >= 1
    by = {s.name: s for s in spans}
    server, route = by["POST /v1/chat/completions"], by[ROUTE_SPAN]
    assert server.service_name == route.service_name == "cacheroute-test"
    assert server.trace_id == route.trace_id == f"{CLIENT_TRACE_ID:032x}"
    assert server.parent_span_id == f"{CLIENT_SPAN_ID:016x}"
    assert route.parent_span_id == server.span_id
    assert server.attributes[ATTR_HTTP_STATUS] == 200
    assert route.attributes[ATTR_REPLICA] == "replica-1"
    assert route.attributes[ATTR_OUTCOME] == "owner_hit"
    assert route.attributes[ATTR_MATCHED_BLOCKS] == 3


# --- contracts of the hooks used (a Ray or vLLM upgrade that breaks one fails here) --


def test_llm_server_chat_and_completions_take_request_and_raw_request_info() -> None:
    from ray.serve.llm.deployment import LLMServer

    for method in (LLMServer.chat, LLMServer.completions):
        assert list(inspect.signature(method).parameters) == [
            "self", "request", "raw_request_info"]


def test_raw_request_info_carries_the_ingress_request_headers() -> None:
    # The replica's parent comes from the headers the middleware rewrote.
    from ray.llm._internal.serve.core.protocol import RawRequestInfo
    from starlette.requests import Request as StarletteRequest

    assert dataclasses.is_dataclass(RawRequestInfo)
    request = StarletteRequest({"type": "http", "method": "POST", "path": "/v1/chat/completions",
                                "headers": [(b"traceparent", CLIENT_TRACEPARENT.encode())]})
    info = RawRequestInfo.from_starlette_request(request)
    assert info.headers["traceparent"] == CLIENT_TRACEPARENT
    # ...and what the engine rebuilds from them still carries it.
    assert info.to_starlette_request().headers["traceparent"] == CLIENT_TRACEPARENT


def test_a_handle_call_carries_the_internal_request_id_of_the_ingress_request() -> None:
    # The route span's bridge: the ingress reads the id from its request context; the
    # handle call to the replicas puts the same id in the router's PendingRequest.
    import ray.serve.context as serve_context
    from ray.serve._private.default_impl import (
        create_dynamic_handle_options,
        create_init_handle_options,
        get_request_metadata,
    )

    token = serve_context._serve_request_context.set(serve_context._RequestContext(
        request_id="client-chosen", _internal_request_id="proxy-assigned"))
    try:
        assert serve_request_key({}) == "proxy-assigned"
        metadata = get_request_metadata(create_init_handle_options(),
                                        create_dynamic_handle_options(method_name="chat"))
    finally:
        serve_context._serve_request_context.reset(token)
    assert metadata.internal_request_id == "proxy-assigned"


def test_vllm_reads_the_w3c_headers_and_takes_an_otlp_endpoint() -> None:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.tracing import extract_trace_headers

    assert extract_trace_headers({"traceparent": CLIENT_TRACEPARENT, "x": "y"}) == {
        "traceparent": CLIENT_TRACEPARENT}
    assert "otlp_traces_endpoint" in {f.name for f in dataclasses.fields(EngineArgs)}
