"""Routing accuracy: the prediction log, the predicted-token cap, and the per-attempt
counting of predicted against delivered cached tokens, on a registry of the test's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from router import Decision, Outcome
from serving.observability.predictions import (
    PredictionLog,
    predicted_cached_tokens,
)
from serving.observability.route_accuracy import RouteAccuracy, RouteAccuracyMetrics

BLOCK = 16


def make_decision(*, replica: str = "r1", outcome: Outcome = Outcome.OWNER_HIT,
                  matched: int = 4, total: int = 6) -> Decision:
    return Decision(replica_id=replica, outcome=outcome, matched_blocks=matched,
                    total_blocks=total, ranked=(replica,))


# -- the prediction -----------------------------------------------------------------


def test_the_prediction_is_the_matched_blocks_in_tokens() -> None:
    assert predicted_cached_tokens(make_decision(matched=4), prompt_tokens=100,
                                   block_size=BLOCK) == 64
    assert predicted_cached_tokens(make_decision(matched=0), prompt_tokens=100,
                                   block_size=BLOCK) == 0


def test_a_block_aligned_prompt_predicts_all_blocks_but_the_last() -> None:
    # vLLM computes the last prompt token even when all of its blocks are cached.
    full = make_decision(matched=6, total=6)
    assert predicted_cached_tokens(full, prompt_tokens=6 * BLOCK, block_size=BLOCK) == 5 * BLOCK
    assert predicted_cached_tokens(full, prompt_tokens=6 * BLOCK + 1,
                                   block_size=BLOCK) == 6 * BLOCK
    assert predicted_cached_tokens(make_decision(matched=1, total=1), prompt_tokens=BLOCK,
                                   block_size=BLOCK) == 0


def test_the_log_keeps_the_latest_decision_of_a_request() -> None:
    log = PredictionLog()
    log.record("req", make_decision(replica="r1", matched=4), prompt_tokens=100,
               block_size=BLOCK)
    log.record("req", make_decision(replica="r2", outcome=Outcome.FAILOVER, matched=0),
               prompt_tokens=100, block_size=BLOCK)
    got = log.get("req")
    assert got is not None
    assert (got.replica_id, got.outcome, got.cached_tokens) == ("r2", "failover", 0)
    assert log.get("req") == got  # read, not taken
    assert log.pop("req") == got
    assert log.get("req") is None and len(log) == 0


def test_the_log_is_bounded_oldest_out_first_and_ignores_requests_without_an_id() -> None:
    log = PredictionLog(max_entries=2)
    for key in ("a", "b", "c", ""):
        log.record(key, make_decision(), prompt_tokens=100, block_size=BLOCK)
    assert len(log) == 2
    assert log.get("a") is None and log.get("b") is not None and log.get("c") is not None
    with pytest.raises(ValueError):
        PredictionLog(max_entries=0)


# -- counting per attempt --------------------------------------------------------------


@dataclass
class Details:
    cached_tokens: int | None


@dataclass
class UsageObject:
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_details: Details | None


@dataclass
class Response:
    """A non-streaming response object, as ray.serve.llm yields it."""

    usage: UsageObject | None


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def chunk(text: str, usage: dict[str, Any] | None = None) -> str:
    obj: dict[str, Any] = {"id": "c", "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage is not None:
        obj["usage"] = usage
    return sse(obj)


def usage(cached: int | None, prompt: int = 100, completion: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


class Stream:
    """An attempt's output stream that records whether it was closed."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Any]:
        try:
            for item in self._items:
                yield item
        finally:
            self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def make_accuracy(*decisions: tuple[str, Decision]) -> tuple[RouteAccuracy, CollectorRegistry,
                                                              PredictionLog]:
    log = PredictionLog()
    for key, decision in decisions:
        log.record(key, decision, prompt_tokens=100, block_size=BLOCK)
    registry = CollectorRegistry()
    return RouteAccuracy(log, RouteAccuracyMetrics(registry)), registry, log


def counted(registry: CollectorRegistry, side: str, replica: str = "r1",
            outcome: str = "owner_hit") -> float | None:
    return registry.get_sample_value(f"cacheroute_{side}_cached_tokens_total",
                                     {"replica": replica, "outcome": outcome})


def drain(accuracy: RouteAccuracy, items: Any, key: str) -> list[Any]:
    async def run() -> list[Any]:
        return [item async for item in accuracy.observe(items, key)]
    return asyncio.run(run())


def test_a_response_counts_its_prediction_and_delivery_under_the_decision() -> None:
    accuracy, registry, _ = make_accuracy(("req", make_decision(matched=4)))
    response = Response(UsageObject(100, 2, Details(cached_tokens=48)))
    assert drain(accuracy, Stream([response]), "req") == [response]
    assert counted(registry, "predicted") == 64
    assert counted(registry, "delivered") == 48


def test_a_stream_is_counted_once_from_its_usage_and_passes_unchanged() -> None:
    accuracy, registry, _ = make_accuracy(("req", make_decision(matched=4)))
    # Continuous usage: every chunk reports the same cached tokens.
    items = [chunk("a", usage(64)), [chunk("b", usage(64)), chunk("c", usage(64))],
             sse({"id": "c", "choices": [], "usage": usage(64)}), "data: [DONE]\n\n"]
    assert drain(accuracy, Stream(items), "req") == items
    assert counted(registry, "predicted") == 64
    assert counted(registry, "delivered") == 64


def test_a_parity_break_shows_as_predicted_tokens_not_delivered() -> None:
    accuracy, registry, _ = make_accuracy(("a", make_decision(replica="r1", matched=4)),
                                          ("b", make_decision(replica="r2", matched=2)))
    drain(accuracy, Stream([chunk("x"), sse({"choices": [], "usage": usage(0)})]), "a")
    drain(accuracy, Stream([Response(UsageObject(100, 2, Details(cached_tokens=0)))]), "b")
    assert (counted(registry, "predicted", "r1"), counted(registry, "delivered", "r1")) == (64, 0)
    assert (counted(registry, "predicted", "r2"), counted(registry, "delivered", "r2")) == (32, 0)


@pytest.mark.parametrize("items", [
    [chunk("a"), chunk("b"), "data: [DONE]\n\n"],  # a stream without usage
    [sse({"choices": [], "usage": usage(None)})],  # usage without cached_tokens
    [Response(None)],
    [Response(UsageObject(100, 2, None))],
    [],  # failed before any output
], ids=["stream-without-usage", "no-cached-tokens", "response-without-usage",
        "response-without-details", "no-output"])
def test_an_attempt_without_cached_tokens_is_counted_on_neither_side(items: list[Any]) -> None:
    accuracy, registry, _ = make_accuracy(("req", make_decision(matched=4)))
    assert drain(accuracy, Stream(items), "req") == items
    assert counted(registry, "predicted") is None
    assert counted(registry, "delivered") is None


def test_a_request_the_router_predicted_nothing_for_is_not_counted() -> None:
    # A baseline policy, or a call outside a request: no prediction, no key.
    accuracy, registry, _ = make_accuracy(("other", make_decision()))
    response = Response(UsageObject(100, 2, Details(cached_tokens=48)))
    drain(accuracy, Stream([response]), "req")
    drain(accuracy, Stream([response]), "")
    assert counted(registry, "predicted") is None
    assert counted(registry, "delivered") is None


def test_a_retry_is_counted_against_its_own_decision() -> None:
    accuracy, registry, log = make_accuracy(("req", make_decision(replica="r1", matched=4)))
    drain(accuracy, Stream([chunk("a", usage(64))]), "req")
    log.record("req", make_decision(replica="r2", outcome=Outcome.FAILOVER, matched=0),
               prompt_tokens=100, block_size=BLOCK)
    drain(accuracy, Stream([chunk("a", usage(32))]), "req")
    assert (counted(registry, "predicted"), counted(registry, "delivered")) == (64, 64)
    assert counted(registry, "predicted", "r2", "failover") == 0
    assert counted(registry, "delivered", "r2", "failover") == 32


def test_closing_the_observed_stream_closes_the_attempt() -> None:
    accuracy, _, _ = make_accuracy(("req", make_decision()))
    stream = Stream([chunk("a"), chunk("b")])

    async def run() -> None:
        observed = accuracy.observe(stream, "req")
        assert await observed.__anext__() == chunk("a")
        await observed.aclose()

    asyncio.run(run())
    assert stream.closed


def test_the_end_of_a_request_drops_its_prediction() -> None:
    accuracy, _, log = make_accuracy(("req", make_decision()))
    accuracy.end("req")
    accuracy.end("")
    assert log.get("req") is None and len(log) == 0
