"""A small OpenAI-compatible chat server on loopback, for the kvbench service tests.

A real HTTP server (starlette under uvicorn, in a thread) so the ``openai`` client's
own transport, SSE parsing and auth header are exercised. It streams the way
vLLM's frontend does: a role chunk with empty content, one chunk per word, then a
usage-only chunk. Tokens are whitespace-separated words of the messages; with
``prefix_caching`` on, ``cached_tokens`` is the prompt's common word prefix with the
previous request, rounded down to ``block_size`` words (vLLM caches whole blocks
and never the block holding the last prompt token).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL_ID = "fake-model"


class FakeChatService:
    """Records every chat request; answers ``max_tokens`` words per reply."""

    def __init__(self, *, prefix_caching: bool = True, block_size: int = 4,
                 fail_on_request: int | None = None, with_usage: bool = True,
                 api_key: str | None = None) -> None:
        self.prefix_caching = prefix_caching
        self.block_size = block_size
        self.fail_on_request = fail_on_request  # 1-based
        self.with_usage = with_usage
        self.api_key = api_key
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self._previous: list[str] = []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/models", self._models, methods=["GET"]),
                                 Route("/v1/chat/completions", self._chat, methods=["POST"])])

    def _denied(self, request: Request) -> Response | None:
        self.auth_headers.append(request.headers.get("authorization"))
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, 401)
        return None

    async def _models(self, request: Request) -> Response:
        denied = self._denied(request)
        return denied or JSONResponse({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "test"}]})

    async def _chat(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        body = await request.json()
        self.bodies.append(body)
        if self.fail_on_request == len(self.bodies):
            return JSONResponse({"error": {"message": "engine died", "type": "server_error"}},
                                500)
        words = [w for m in body["messages"] for w in f"{m['role']}: {_text(m['content'])}".split()]
        common = 0
        for a, b in zip(words, self._previous, strict=False):
            if a != b:
                break
            common += 1
        cached = 0
        if self.prefix_caching:
            cached = min(common, len(words) - 1) // self.block_size * self.block_size
        self._previous = words
        turn = len(self.bodies)
        # vLLM's benchmark client sends max_completion_tokens, the openai client max_tokens.
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        reply = [f"w{turn}.{k}" for k in range(int(limit))]
        return StreamingResponse(self._stream(reply, len(words), cached),
                                 media_type="text/event-stream")

    async def _stream(self, reply: list[str], prompt: int, cached: int) -> AsyncIterator[bytes]:
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID}

        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps({**base, **data}).encode() + b"\n\n"

        yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None}]})
        for k, word in enumerate(reply):
            yield event({"choices": [{"index": 0, "delta": {"content": (" " if k else "") + word},
                                      "finish_reason": "length" if k == len(reply) - 1
                                      else None}]})
        if self.with_usage:
            yield event({"choices": [], "usage": {
                "prompt_tokens": prompt, "completion_tokens": len(reply),
                "total_tokens": prompt + len(reply),
                "prompt_tokens_details": {"cached_tokens": cached}}})
        yield b"data: [DONE]\n\n"


def _text(content: str | list[dict[str, Any]]) -> str:
    """A message's text: a string, or the text parts of a content list joined by newlines
    (as vLLM's frontend joins them for a string chat template)."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")


@contextmanager
def serve(service: FakeChatService) -> Iterator[str]:
    """Run ``service`` on a free loopback port for the block; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(service.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake OpenAI server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
