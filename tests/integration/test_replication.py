"""End-to-end: replication ahead of a spill (`routing.replicate_before_spill`, off by
default) on its own 2-replica stack with the option on.

Where requests went is read from the engines' own per-replica counters, and the
replication's effect from the `cached_tokens` the spilled request reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

from serving.routing.prompt_tokens import PromptTokenizer
from tests.integration.conftest import Stack, start_stack, stop_stack
from tests.integration.test_cacheroute import (
    BLOCK,
    chat_body,
    served_delta,
    settled_counts,
    tenant_prompt,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A longer context than the shared stack's, so a generation can stay in flight
    # for many seconds after a 1.4k-token prompt. No load floor: the scenario fills the
    # home at 2 in flight, the bound's own cap on 2 replicas at ε = 0.25.
    proc, stack = start_stack(tmp_path_factory.mktemp("replicating"),
                              routing_yaml="replicate_before_spill: true, load_floor: 0",
                              max_model_len=4096)
    try:
        yield stack
    finally:
        stop_stack(proc)


def replications(stack: Stack, result: str) -> float:
    text = httpx.get(f"{stack.base_url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "cacheroute_replications_total" and s.labels.get("result") == result)


def test_a_filling_owner_has_its_prefix_replicated_before_the_spill(
        replicating: Stack) -> None:
    """Two long generations fill the tenant's home (2 of 2 in flight on 2 replicas at
    ε = 0.25); the router prefills the tenant's prefix on the other replica meanwhile,
    so the request that spills there reads it from cache instead of computing it."""
    stack = replicating
    system = tenant_prompt("Globex")
    # Long enough to stay in flight while the replication runs (seconds on CPU).
    long_run = {"max_tokens": 1500, "ignore_eos": True}

    async def scenario() -> tuple[dict, dict[str, float], dict[str, float]]:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=600,
                                     headers={"Authorization": f"Bearer {stack.api_key}"}) as c:
            start = settled_counts(stack)
            (await c.post("/v1/chat/completions",
                          json=chat_body(stack, system, "Warm?"))).raise_for_status()
            warmed = served_delta(stack, start, 1)
            before = settled_counts(stack, quiet_s=1.0)
            sent = replications(stack, "succeeded")
            ended: list[float] = []
            first = asyncio.ensure_future(c.post(
                "/v1/chat/completions", json=chat_body(stack, system, "Long 1?", **long_run)))
            await asyncio.sleep(1.0)  # routed and counted in flight before the next
            second = asyncio.ensure_future(c.post(
                "/v1/chat/completions", json=chat_body(stack, system, "Long 2?", **long_run)))
            for long in (first, second):
                long.add_done_callback(lambda _: ended.append(time.monotonic()))
            deadline = time.monotonic() + 60
            while replications(stack, "succeeded") <= sent and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert replications(stack, "succeeded") > sent, "no replication finished"
            spilled_at = time.monotonic()
            spilled = await c.post("/v1/chat/completions",
                                   json=chat_body(stack, system, "Spilled?"))
            spilled.raise_for_status()
            for long in (await first, await second):
                long.raise_for_status()
            # Otherwise the home had room again and the test proves nothing.
            assert min(ended) > spilled_at, "the long generations ended before the spill"
            return spilled.json(), warmed, before

    result, warmed, before = asyncio.run(scenario())
    (home,) = warmed
    delta = served_delta(stack, before, 4)
    # The home served the two long ones; the other replica the replication's prefill
    # and the spilled request (a spill without the replication: also there, uncached;
    # no spill at all: 3 on the home).
    assert delta.get(home) == 2 and sum(delta.values()) == 4, (home, delta)
    cached = result["usage"]["prompt_tokens_details"]["cached_tokens"]
    # Without the replication this request would have computed its whole prompt there.
    shared = len(PromptTokenizer(str(stack.model_dir)).token_ids(
        ChatCompletionRequest(**chat_body(stack, system, ""))))
    assert cached >= (shared // BLOCK - 1) * BLOCK, (cached, shared)
