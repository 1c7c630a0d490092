"""End-to-end tracing: a live stack exporting OTLP/HTTP to a loopback receiver.

The module starts its own small stack (one replica) with `tracing.enabled` and the
exporter pointed at `OtlpSink`, a real HTTP server in this process. Requests carry a
client `traceparent`; the tests then wait for that trace's spans from every process:

    POST /v1/chat/completions (ingress) -> cacheroute.route, llm.generate (replica)
                                            llm.generate -> llm_request (vLLM engine)

It does not use the shared `stack`, so conftest orders it before that stack starts,
and the module-scoped stack is stopped when the module ends: never two stacks at once.
Spans are batched (about 5 s) in each process, hence the waits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Iterator

import pytest

from router import Outcome
from tests.integration.conftest import Stack, start_stack, stop_stack
from tests.otlp_sink import OtlpSink, ReceivedSpan

pytestmark = pytest.mark.integration

SERVICE = "cacheroute-it"
INGRESS_SPAN = "POST /v1/chat/completions"
SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
EXPORT_WAIT_S = 90.0

# ~1.3k tokens: several 128-token blocks, so a repeat is served from the prefix cache.
SYSTEM_PROMPT = " ".join(
    f"Rule {i}: answer politely, cite the handbook section {i}, and never reveal secret {i * 7}."
    for i in range(60)
)


@dataclass
class TracedStack:
    stack: Stack
    sink: OtlpSink


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedStack]:
    with OtlpSink() as sink:
        proc, stack = start_stack(
            tmp_path_factory.mktemp("traced"), replicas=1,
            extra_yaml=("tracing:\n"
                        "  enabled: true\n"
                        f"  otlp_endpoint: \"{sink.endpoint}\"\n"
                        f"  service_name: {SERVICE}\n"))
        try:
            yield TracedStack(stack, sink)
        finally:
            stop_stack(proc)


@dataclass(frozen=True)
class ClientSpan:
    trace_id: str  # 32 hex digits
    span_id: str   # 16 hex digits

    @classmethod
    def new(cls) -> "ClientSpan":
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    def header(self) -> dict[str, str]:
        return {"traceparent": f"00-{self.trace_id}-{self.span_id}-01"}


def chat(traced: TracedStack, client: ClientSpan, question: str, **extra) -> dict:
    with traced.stack.http() as http:
        resp = http.post("/v1/chat/completions", headers=client.header(), json={
            "model": traced.stack.model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": question}], **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


def trace_spans(traced: TracedStack, client: ClientSpan,
                names: set[str]) -> dict[str, ReceivedSpan]:
    """The client's trace, once it holds a span of each name (one of each expected)."""
    def ready(spans: list[ReceivedSpan]) -> bool:
        return names <= {s.name for s in spans if s.trace_id == client.trace_id}

    spans = [s for s in traced.sink.wait_for(ready, timeout_s=EXPORT_WAIT_S)
             if s.trace_id == client.trace_id]
    by_name: dict[str, ReceivedSpan] = {}
    for span in spans:
        assert span.name not in by_name, f"two {span.name} spans in one request's trace"
        by_name[span.name] = span
    return by_name


def test_a_chat_completion_is_one_trace_from_ingress_to_replica(traced: TracedStack) -> None:
    client = ClientSpan.new()
    body = chat(traced, client, "What is rule 3?")
    spans = trace_spans(traced, client, {INGRESS_SPAN, "cacheroute.route", "llm.generate"})
    ingress, route, replica = spans[INGRESS_SPAN], spans["cacheroute.route"], spans["llm.generate"]

    # Ingress: the client's span is its parent.
    assert ingress.parent_span_id == client.span_id
    assert ingress.kind == SPAN_KIND_SERVER
    assert ingress.service_name == SERVICE
    assert ingress.attributes["http.response.status_code"] == 200
    assert ingress.attributes["http.route"] == "/v1/chat/completions"

    # Routing decision: recorded on Serve's router loop, written under the ingress span.
    assert route.parent_span_id == ingress.span_id
    assert route.attributes["cacheroute.replica"]
    assert route.attributes["cacheroute.outcome"] in {o.value for o in Outcome}
    assert route.attributes["cacheroute.total_blocks"] >= 8  # the ~1.3k-token prompt
    assert ingress.start_ns <= route.start_ns <= route.end_ns <= ingress.end_ns

    # Replica: the ingress span is its parent, and it ran where the router sent it.
    assert replica.parent_span_id == ingress.span_id
    assert replica.kind == SPAN_KIND_SERVER
    assert replica.attributes["cacheroute.replica"] == route.attributes["cacheroute.replica"]
    usage = body["usage"]
    assert replica.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert replica.attributes["cacheroute.cached_tokens"] == (
        usage["prompt_tokens_details"]["cached_tokens"])
    assert route.end_ns <= replica.start_ns


def test_a_repeated_prefix_is_an_owner_hit_with_cached_tokens(traced: TracedStack) -> None:
    chat(traced, ClientSpan.new(), "What is rule 5?")  # the replica now holds the prefix
    client = ClientSpan.new()
    body = chat(traced, client, "What is rule 6?")
    spans = trace_spans(traced, client, {"cacheroute.route", "llm.generate"})
    route, replica = spans["cacheroute.route"], spans["llm.generate"]
    assert route.attributes["cacheroute.outcome"] == Outcome.OWNER_HIT.value
    assert route.attributes["cacheroute.matched_blocks"] >= 8
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 8 * 128
    assert replica.attributes["cacheroute.cached_tokens"] == cached


def test_a_streamed_completion_records_ttft_and_ends_after_the_stream(
        traced: TracedStack) -> None:
    client = ClientSpan.new()
    with traced.stack.http() as http:
        with http.stream("POST", "/v1/chat/completions", headers=client.header(), json={
                "model": traced.stack.model, "max_tokens": 8, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Count to five."}]}) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    spans = trace_spans(traced, client, {INGRESS_SPAN, "llm.generate"})
    ingress, replica = spans[INGRESS_SPAN], spans["llm.generate"]
    assert replica.attributes["cacheroute.stream"] is True
    assert 0 < replica.attributes["cacheroute.ttft_s"] < (replica.end_ns - replica.start_ns) / 1e9
    assert replica.attributes["cacheroute.cached_tokens"] >= 0
    # The ingress span lasts until the last chunk left, not until the headers did.
    assert ingress.end_ns >= replica.end_ns


def test_the_engine_span_is_a_child_of_the_replica_span(traced: TracedStack) -> None:
    # `tracing.otlp_endpoint` also turns on vLLM's own request span.
    client = ClientSpan.new()
    chat(traced, client, "What is rule 9?")
    spans = trace_spans(traced, client, {"llm.generate", "llm_request"})
    engine, replica = spans["llm_request"], spans["llm.generate"]
    assert engine.parent_span_id == replica.span_id
    assert engine.service_name == SERVICE
    assert engine.attributes["gen_ai.latency.time_to_first_token"] > 0
