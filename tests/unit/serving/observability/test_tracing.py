"""Request tracing (serving/observability/tracing.py): config, app wiring, OTLP/HTTP export to
a loopback receiver, and the hooks it relies on. The ingress middleware and route log are
test_tracing_ingress.py, the replica span test_tracing_replica.py.

Spans go to an InMemorySpanExporter (synchronous, so a span is visible the moment it
ends), except in the export test, which posts real OTLP protobuf to `OtlpSink`.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from serving.config import ConfigError, ServiceConfig, TracingConfig, validate_config
from serving.observability.tracing import (
    ATTR_HTTP_STATUS,
    ATTR_MATCHED_BLOCKS,
    ATTR_OUTCOME,
    ATTR_REPLICA,
    ROUTE_SPAN,
    TracingMiddleware,
    build_tracer_provider,
    serve_request_key,
)
from tests.otlp_sink import OtlpSink
from tests.unit.serving.observability.tracing_fakes import (
    CLIENT_SPAN_ID,
    CLIENT_TRACE_ID,
    CLIENT_TRACEPARENT,
    REQUEST_ID_HEADER,
    make_ingress,
    run,
)


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
    from serving.ingress.auth import TenantMiddleware
    from serving.ingress.ingress import build_fastapi_app

    config = validate_config({"server": {"api_keys": ["k"]}, "tracing": {"enabled": True}})
    app = build_fastapi_app(config)
    classes = [m.cls for m in app.user_middleware]
    # Outermost (first): requests the key check rejects are traced too.
    assert classes[0] is TracingMiddleware and TenantMiddleware in classes
    # No route log given at build time: the app is pickled to the ingress replica, and
    # the middleware finds that process's own when it is built there.
    assert app.user_middleware[0].kwargs == {"settings": config.tracing}
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


def test_the_middleware_reads_the_route_log_of_the_process_that_serves() -> None:
    """The app is built in the CLI and pickled to the ingress replica: the middleware
    must read the route log the router of *that* process writes, not a copy of the
    builder's."""
    from ray import cloudpickle

    from serving.ingress.ingress import build_fastapi_app
    from serving.routing.registry import local_routers

    config = ServiceConfig.model_validate({"tracing": {"enabled": True}})
    middleware = build_fastapi_app(config).user_middleware[0]
    assert middleware.cls is TracingMiddleware
    # What travels with the app: the middleware's arguments, pickled and unpickled.
    args, kwargs = cloudpickle.loads(cloudpickle.dumps((middleware.args, middleware.kwargs)))
    built = middleware.cls(lambda *a: None, *args, **kwargs)
    assert built._route_log is local_routers().route_log
