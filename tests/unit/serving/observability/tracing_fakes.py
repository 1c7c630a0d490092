"""What the tracing tests share: a client's trace context, a routing decision, and a
small OpenAI-shaped app behind TracingMiddleware with its spans in memory
(an InMemorySpanExporter: synchronous, so a span is visible the moment it ends)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.responses import JSONResponse, StreamingResponse

from router import Decision, Outcome
from serving.config import TracingConfig
from serving.observability.tracing import (
    RouteLog,
    TracingMiddleware,
    build_tracer_provider,
)

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
