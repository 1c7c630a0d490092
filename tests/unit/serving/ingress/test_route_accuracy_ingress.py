"""The ingress joins each attempt's usage with the router's prediction: streamed and
non-streamed calls, through failover and without it, on the app's registry.

The replica is a fake in place of upstream's `_get_response`; the router's part is a
prediction recorded in this process's LocalRouters, as the router records it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ray.serve.llm.ingress import OpenAiIngress
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)

from router import Decision, Outcome
from serving.config import ServiceConfig
from serving.observability.metrics import REGISTRY
from serving.routing.registry import local_routers

BLOCK = 16
PROMPT_TOKENS = 100
DELIVERED = 32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def usage(with_details: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1,
                           "total_tokens": PROMPT_TOKENS + 1}
    if with_details:
        out["prompt_tokens_details"] = {"cached_tokens": DELIVERED}
    return out


async def fake_replica(self: Any, *, body: ChatCompletionRequest, call_method: str,
                       raw_request: Any = None) -> AsyncIterator[Any]:
    """vLLM's answer: usage on the response, or on the stream's last chunk when the
    request asked for it (on every chunk with continuous usage)."""
    if not body.stream:
        yield ChatCompletionResponse(
            model=body.model, choices=[{"index": 0, "finish_reason": "length",
                                        "message": {"role": "assistant", "content": "x"}}],
            usage=usage(True))
        return
    opts = body.stream_options
    include = bool(opts and opts.include_usage)
    every = bool(opts and opts.continuous_usage_stats)
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                             "model": body.model, "choices": [
                                 {"index": 0, "delta": {"role": "assistant", "content": "x"},
                                  "finish_reason": "length"}]}
    if include and every:
        chunk["usage"] = usage(True)
    yield [f"data: {json.dumps(chunk)}\n\n"]
    if include:
        last = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                "model": body.model, "choices": [], "usage": usage(True)}
        yield [f"data: {json.dumps(last)}\n\n"]
    yield ["data: [DONE]\n\n"]


def sample(side: str, replica: str) -> float:
    return REGISTRY.get_sample_value(f"cacheroute_{side}_cached_tokens_total",
                                     {"replica": replica, "outcome": "owner_hit"}) or 0.0


@pytest.mark.parametrize("failover", [True, False])
@pytest.mark.parametrize("stream,include_usage", [(False, False), (True, True), (True, False)])
def test_each_call_counts_predicted_against_delivered_when_usage_arrives(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch, failover: bool, stream: bool,
        include_usage: bool) -> None:
    from serving.ingress import ingress as ingress_module
    from serving.ingress.ingress import CacheRouteIngress
    from serving.prefixes.backend import ingress_args

    key = f"req-{failover}-{stream}-{include_usage}"
    replica = f"replica-{key}"  # series of this case alone on the app's registry
    monkeypatch.setattr(OpenAiIngress, "_get_response", fake_replica)
    monkeypatch.setattr(ingress_module, "serve_request_id", lambda: key)
    config = ServiceConfig.model_validate({"engine": {"block_size": BLOCK}})
    predictions = local_routers().predictions
    predictions.record(key, Decision(replica_id=replica, outcome=Outcome.OWNER_HIT,
                                     matched_blocks=4, total_blocks=6, ranked=(replica,)),
                       prompt_tokens=PROMPT_TOKENS, block_size=BLOCK)
    body = ChatCompletionRequest(
        model="m", max_tokens=1, stream=stream,
        stream_options={"include_usage": True} if include_usage else None,
        messages=[{"role": "user", "content": "Hello there."}])

    async def main() -> list[Any]:
        ingress = CacheRouteIngress(
            {"m": object()}, {"m": None}, app_name="a", llm_deployment="LLMServer:m",
            num_replicas=1, prefixes=ingress_args(config, str(tiny_model)),
            failover={"enabled": failover})
        try:
            return [item async for item in ingress._get_response(body=body,
                                                                  call_method="chat")]
        finally:
            await ingress._prefix_registry.close()

    items = asyncio.run(main())
    assert items
    # Failover asks every stream for usage upstream; without it, only the client's
    # request for usage puts it in the stream. No usage: neither side is counted.
    counts = not stream or include_usage or failover
    assert sample("predicted", replica) == (4 * BLOCK if counts else 0)
    assert sample("delivered", replica) == (DELIVERED if counts else 0)
    assert predictions.get(key) is None  # dropped when the request ended
