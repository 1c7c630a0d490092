"""End-to-end: routing accuracy, predicted against delivered cached tokens, on /metrics.

Parity broken on purpose: the module starts its own one-replica stack whose config says
`engine.block_size: 16` while `engine.extra_engine_kwargs` (passed to vLLM as-is, last)
sets the engine's block size back to 128. The config permits it, and it is the shape
of a real incident: the engine's block size is not the one the router hashes with (an
override in the passthrough, or an attention backend that imposes its own). The
engine then runs exactly the shared stack's engine (nothing new to compile); only the
router is wrong. It hashes 16-token blocks, so a repeated prompt of 113-128 tokens is
predicted 96 tokens cached, while the engine, which caches whole 128-token blocks and
never the last prompt token, serves none of it. The test sends such prompts, some
streamed, and evaluates `CacheRouteRoutingPredictionDiverged`'s expression on the
scraped counters with the rule's own thresholds.

In parity (the shared stack), the same comparison stays above the alert's threshold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import DELIVERED_CACHED_TOKENS, PREDICTED_CACHED_TOKENS
from monitoring.rules import DEFAULTS, WINDOW
from tests.integration.conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.integration

ENGINE_BLOCK = 128  # the engine's real block size, the shared stack's
ROUTER_BLOCK = 16   # what the drifted config tells the router
# The shared stack's engine settings (start_stack and write_config defaults), restated
# because a config section replaces the one write_config writes: the same engine
# arguments compile nothing new.
DRIFTED_YAML = (
    "engine:\n"
    "  max_model_len: 2048\n"
    "  kv_cache_gib: 1\n"
    "  max_num_seqs: 8\n"
    "  enable_prefix_caching: true\n"
    f"  block_size: {ROUTER_BLOCK}\n"
    f"  extra_engine_kwargs: {{block_size: {ENGINE_BLOCK}}}\n"
)

MIN_RATIO = float(DEFAULTS["minPredictionDeliveredRatio"])
MIN_RATE = float(DEFAULTS["minPredictedCachedTokensRate"])
assert WINDOW.endswith("m")
WINDOW_S = int(WINDOW[:-1]) * 60

PROMPTS = 4
# Enough repeats that the predicted tokens pass the alert's rate guard over its window:
# each repeat predicts 6 router blocks (96 tokens) on the one replica.
SENDS = 200


def ticket_prompt(i: int, repeats: int = 1) -> str:
    """112 tokens of the default model's tokenizer per repeat (the drifted test checks
    the engine's own count)."""
    return ((f"Ticket {i}: the printer on floor {i} jams whenever someone prints a duplex "
             "report, and the maintenance log says the rollers were replaced last month. ")
            * 3 + f"Summarise ticket {i} for the on-call engineer in one short sentence:"
            ) * repeats


def accuracy_counts(stack: Stack) -> dict[str, tuple[float, float]]:
    """(predicted, delivered) cached tokens per replica, all outcomes summed."""
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for side, metric in enumerate((PREDICTED_CACHED_TOKENS, DELIVERED_CACHED_TOKENS)):
                if s.name == metric.name:
                    out.setdefault(s.labels["replica"], [0.0, 0.0])[side] += s.value
    return {replica: (p, d) for replica, (p, d) in out.items()}


def deltas(before: dict[str, tuple[float, float]],
           after: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    out = {}
    for replica, (p, d) in after.items():
        p0, d0 = before.get(replica, (0.0, 0.0))
        if p - p0 or d - d0:
            out[replica] = (p - p0, d - d0)
    return out


def complete(http: httpx.Client, stack: Stack, prompt: str, *, stream: bool) -> dict:
    """The usage of one completion; a stream asks for it in its last chunk."""
    body: dict = {"model": stack.model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    if not stream:
        resp = http.post("/v1/completions", json=body)
        resp.raise_for_status()
        return resp.json()["usage"]
    body.update(stream=True, stream_options={"include_usage": True})
    usage = None
    with http.stream("POST", "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[len("data: "):]).get("usage") or usage
    assert usage is not None, "the stream carried no usage"
    return usage


def settled(stack: Stack, before: dict[str, tuple[float, float]],
            timeout_s: float = 30) -> dict[str, tuple[float, float]]:
    """The deltas once two scrapes a second apart agree (each attempt is counted
    before its response leaves the ingress; this only absorbs scheduling)."""
    deadline = time.monotonic() + timeout_s
    last = deltas(before, accuracy_counts(stack))
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = deltas(before, accuracy_counts(stack))
        if now == last:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    proc, stack = start_stack(tmp_path_factory.mktemp("drifted"), replicas=1,
                              extra_yaml=DRIFTED_YAML)
    try:
        yield stack
    finally:
        stop_stack(proc)


def test_a_router_block_size_the_engine_does_not_use_fires_the_divergence_alert(
        drifted: Stack) -> None:
    before = accuracy_counts(drifted)
    expected = 0  # what the router predicts: the repeats' full router blocks but the last
    started = time.monotonic()
    with drifted.http() as http:
        for n in range(SENDS):
            usage = complete(http, drifted, ticket_prompt(n % PROMPTS), stream=n % 2 == 1)
            prompt_tokens = usage["prompt_tokens"]
            # The scenario's premise: full router blocks, no full engine block.
            assert 2 * ROUTER_BLOCK < prompt_tokens <= ENGINE_BLOCK, usage
            assert usage["prompt_tokens_details"]["cached_tokens"] == 0, usage
            if n >= PROMPTS:
                expected += (prompt_tokens - 1) // ROUTER_BLOCK * ROUTER_BLOCK
    elapsed_s = time.monotonic() - started
    # The counters' increase is then within one window of the rule's rate().
    assert elapsed_s < WINDOW_S, f"the scenario took {elapsed_s:.0f}s, over {WINDOW}"

    (replica, (predicted, delivered)), = settled(drifted, before).items()
    # Every repeat was predicted a hit; the engine delivered nothing.
    assert predicted >= expected, (replica, predicted, expected)
    assert delivered == 0, (replica, delivered)
    # CacheRouteRoutingPredictionDiverged, evaluated as Prometheus would right after
    # the scenario: delivered / predicted below the ratio, with rate(predicted[5m])
    # (the increase over the window) above the guard.
    assert delivered / predicted < MIN_RATIO
    assert predicted / WINDOW_S > MIN_RATE, (predicted, MIN_RATE * WINDOW_S)


def test_in_parity_delivered_cached_tokens_stay_above_the_alert_threshold(
        stack: Stack) -> None:
    """The shared stack (router and engines on one block size): repeats of prompts a
    few engine blocks long are delivered what the router predicted."""
    before = accuracy_counts(stack)
    with stack.http() as http:
        for n in range(3 * PROMPTS):
            # Longer prompts: in parity nothing under one engine block is predicted.
            complete(http, stack, "Parity check. " + ticket_prompt(n % PROMPTS, repeats=3),
                     stream=n % 2 == 1)
    counted = settled(stack, before)
    assert sum(p for p, _ in counted.values()) > 0, counted
    for replica, (predicted, delivered) in counted.items():
        if predicted:
            assert delivered / predicted >= MIN_RATIO, (replica, predicted, delivered)
