"""Tokenising a request for routing (serving/routing/route_requests.py): off the event
loop, under a time budget, kept until the request completes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from ray.serve._private.common import RequestMetadata
from ray.serve._private.request_router.common import PendingRequest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

from serving.routing.route_requests import RouteRequests
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def pending(question: str, *, request_id: str) -> PendingRequest:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": question}])
    meta = RequestMetadata(request_id=request_id, internal_request_id=request_id)
    return PendingRequest(args=[body], kwargs={}, metadata=meta)


def test_tokens_are_computed_once_per_request_and_forgotten_on_completion(tiny_model):
    routes = RouteRequests(str(tiny_model))
    calls = []
    real = routes.tokenizer.packed_ids
    routes.tokenizer.packed_ids = lambda body: calls.append(body) or real(body)

    async def run():
        first = await routes.of(pending("What is a cache?", request_id="a"))
        again = await routes.of(pending("What is a cache?", request_id="a"))
        routes.forget("a")
        third = await routes.of(pending("What is a cache?", request_id="a"))
        return first, again, third

    first, again, third = asyncio.run(run())
    assert first.token_ids and again is first
    assert list(third.token_ids) == list(first.token_ids) and len(calls) == 2


def test_tokenising_runs_off_the_event_loop(tiny_model):
    routes = RouteRequests(str(tiny_model))
    seen = []
    real = routes.tokenizer.packed_ids
    routes.tokenizer.packed_ids = lambda body: seen.append(threading.get_ident()) or real(body)

    async def run():
        await routes.of(pending("hello", request_id="b"))
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert seen and seen[0] != loop_thread


def test_a_request_past_the_budget_routes_without_a_key_and_the_loop_keeps_going(tiny_model):
    routes = RouteRequests(str(tiny_model))
    routes.budget_s = 0.2
    release = threading.Event()
    routes.tokenizer.packed_ids = lambda body: release.wait(10) and None

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        request = await routes.of(pending("a template that renders for hours", request_id="c"))
        elapsed = time.monotonic() - started
        task.cancel()
        return request, elapsed, ticks

    try:
        request, elapsed, ticks = asyncio.run(run())
    finally:
        release.set()
    assert request.token_ids is None  # no prefix key: outcome no_key
    assert routes.over_budget == 1
    assert 0.2 <= elapsed < 2.0
    assert ticks >= 5  # the event loop ran other work while the render was stuck
