"""Request tracing at the ingress (serving/observability/tracing.py): the middleware's
server span, the route span written from the router's recorded decision, the route
log, and the router recording its decision under the internal request id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from router import Outcome
from serving.config import ServiceConfig, TracingConfig
from serving.observability.tracing import (
    ATTR_HTTP_ROUTE,
    ATTR_HTTP_STATUS,
    ATTR_MATCHED_BLOCKS,
    ATTR_OUTCOME,
    ATTR_PROMPT_TOKENS,
    ATTR_REPLICA,
    ATTR_ROUTE_ATTEMPTS,
    ATTR_TOTAL_BLOCKS,
    ROUTE_SPAN,
    RouteLog,
)
from tests.unit.serving.observability.tracing_fakes import (
    CLIENT_SPAN_ID,
    CLIENT_TRACE_ID,
    CLIENT_TRACEPARENT,
    REQUEST_ID_HEADER,
    by_name,
    make_decision,
    make_ingress,
    parse_traceparent,
    run,
    traceparent,
)


# --- ingress middleware -------------------------------------------------------------


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
    from tests.tiny_model import build_tiny_model

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
