"""A body Ray cannot serialize is the client's 400, not a 500 (serving/ingress/forwarding.py)."""

from __future__ import annotations

import asyncio

import pytest
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException

from serving.ingress.forwarding import refuse_unforwardable


async def items(*values, error: Exception | None = None):
    for v in values:
        yield v
    if error is not None:
        raise error


def collect(stream) -> list:
    async def run() -> list:
        return [x async for x in refuse_unforwardable(stream)]
    return asyncio.new_event_loop().run_until_complete(run())


def test_items_pass_through() -> None:
    assert collect(items(1, 2, 3)) == [1, 2, 3]


def test_an_unserializable_body_is_a_400() -> None:
    err = TypeError("Could not serialize the argument EmbeddingChatRequest(...) for a task")
    with pytest.raises(OpenAIHTTPException) as caught:
        collect(items(error=err))
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"


def test_other_errors_pass_through() -> None:
    with pytest.raises(TypeError, match="something else"):
        collect(items(1, error=TypeError("something else")))
