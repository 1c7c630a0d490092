"""Request tracing at the replica (serving/observability/tracing.py): the generation span
around the engine call, its TTFT and cached tokens, and the traceparent the engine gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from serving.config import TracingConfig
from serving.observability.tracing import (
    ATTR_CACHED_TOKENS,
    ATTR_CANCELLED,
    ATTR_ERROR_TYPE,
    ATTR_INPUT_TOKENS,
    ATTR_OUTPUT_TOKENS,
    ATTR_REPLICA,
    ATTR_STREAM,
    ATTR_TTFT_S,
    GENERATE_SPAN,
    GenerationTracer,
    build_tracer_provider,
)
from tests.unit.serving.observability.tracing_fakes import (
    CLIENT_TRACE_ID,
    by_name,
    parse_traceparent,
    run,
    traceparent,
)


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
