"""bench.replay against an in-process fake OpenAI server (an httpx MockTransport).

The fake streams chat and completion chunks the way vLLM's frontend does (a role
chunk with empty content first, text chunks, then a usage-only chunk), so TTFT
detection, usage parsing, error capture and both schedules are checked without a
server or a network.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from typing import Any

import pytest

from bench.replay import replay
from bench.trace import TraceRequest

openai = pytest.importorskip("openai")
# The SDK's own httpx flavour (openai 3.x ships it as ``httpx2``): its transports
# and clients are the ones the SDK accepts.
httpx_mod = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__)


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) \
        + b"data: [DONE]\n\n"


def _chat_stream(prompt_tokens: int, cached: int) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return _sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hello"},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": " there"},
                              "finish_reason": "length"}]},
        {**base, "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": 2,
            "total_tokens": prompt_tokens + 2,
            "prompt_tokens_details": {"cached_tokens": cached}}},
    )


def _completion_stream() -> bytes:
    base = {"id": "d1", "object": "text_completion", "created": 0, "model": "m"}
    return _sse(
        {**base, "choices": [{"index": 0, "text": "Once", "finish_reason": None,
                              "logprobs": None}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                          "total_tokens": 6}},
    )


class FakeServer:
    """Records every request body; answers by the ``user`` field and the path."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.session_headers: list[str | None] = []
        self.sent_at: list[float] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        self.session_headers.append(request.headers.get("x-session-id"))
        self.sent_at.append(time.perf_counter())
        if body.get("user") == "fail":
            return httpx_mod.Response(500, json={"error": {"message": "engine died",
                                                           "type": "server_error"}})
        headers = {"content-type": "text/event-stream"}
        if request.url.path.endswith("/chat/completions"):
            n = len(body["messages"][-1]["content"])
            return httpx_mod.Response(200, headers=headers, content=_chat_stream(100 + n, 64))
        return httpx_mod.Response(200, headers=headers, content=_completion_stream())


def make_chat(t: float, text: str, session: str | None = None) -> TraceRequest:
    return TraceRequest(t=t, max_tokens=2, tenant="t00", session=session,
                        messages=({"role": "system", "content": "sys"},
                                  {"role": "user", "content": text}))


def run(trace: list[TraceRequest], server: FakeServer, **kwargs: Any) -> list[Any]:
    async def go() -> list[Any]:
        async with httpx_mod.AsyncClient(transport=httpx_mod.MockTransport(server)) as http:
            return await replay(trace, base_url="http://fake", model="m", policy="p",
                                http_client=http, **kwargs)
    return asyncio.run(go())


def test_streamed_chat_gives_ttft_usage_and_cached_tokens() -> None:
    server = FakeServer()
    [result] = run([make_chat(0.0, "abc")], server, concurrency=1)
    assert result.error is None
    assert (result.prompt_tokens, result.cached_tokens, result.completion_tokens) == (103, 64, 2)
    assert result.ttft_s is not None and result.e2e_s is not None
    assert 0 <= result.ttft_s <= result.e2e_s
    body = server.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 2 and body["model"] == "m" and "user" not in body


def test_completion_prompt_and_missing_cache_details() -> None:
    trace = [TraceRequest(t=0.0, max_tokens=1, prompt="Once upon")]
    server = FakeServer()
    [result] = run(trace, server, concurrency=1)
    assert result.error is None
    assert result.prompt_tokens == 5 and result.cached_tokens is None
    assert server.bodies[0]["prompt"] == "Once upon"


def test_a_failed_request_is_recorded_not_raised_and_session_is_sent_as_user_and_header(
        ) -> None:
    server = FakeServer()
    results = run([make_chat(0.0, "ok", session="s1"), make_chat(0.0, "x", session="fail")],
                  server, concurrency=2)
    assert [r.index for r in results] == [0, 1]
    assert results[0].error is None
    assert results[1].error is not None and "engine died" in results[1].error
    assert results[1].ttft_s is None and results[1].prompt_tokens is None
    assert sorted(b["user"] for b in server.bodies) == ["fail", "s1"]
    assert sorted(server.session_headers) == ["fail", "s1"]  # type: ignore[type-var]


def test_open_loop_sends_at_the_trace_offsets() -> None:
    server = FakeServer()
    trace = [make_chat(0.0, "a"), make_chat(0.15, "b"), make_chat(0.3, "c")]
    results = run(trace, server)  # no concurrency: open loop
    assert [r.error for r in results] == [None, None, None]
    sent = [r.sent_s for r in results]
    # Never early (the schedule is the trace's); late only by scheduling delay, which a
    # loaded CI machine can stretch, hence the loose upper bound.
    assert 0.14 <= sent[1] - sent[0] < 1.0
    assert 0.29 <= sent[2] - sent[0] < 1.2
    assert sent[2] > sent[1]
