"""The replica's stream batching: what is ready leaves at once, bursts are batched per
interval, the end is never held back, errors and cancellation propagate; and the
upstream method it overrides still exists on the pinned Ray."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator

import pytest

from serving.replica.streaming import batched

INTERVAL_S = 0.5


async def timed(stream: AsyncIterator[list[str]]) -> list[tuple[float, list[str]]]:
    """Each batch with the seconds since the start at which it left."""
    start = time.monotonic()
    return [(time.monotonic() - start, batch) async for batch in stream]


async def engine(schedule: list[tuple[float, str]]) -> AsyncIterator[str]:
    """Yields each item after its delay; a delay of 0 yields with no await between."""
    for delay, item in schedule:
        if delay:
            await asyncio.sleep(delay)
        yield item


def test_the_first_items_leave_at_once_with_those_ready_beside_them() -> None:
    # vLLM's role chunk and first content chunk come back to back: one batch, no wait.
    out = asyncio.run(timed(batched(engine([(0.05, "role"), (0, "first token"),
                                           (1.0, "late")]), INTERVAL_S)))
    assert [b for _, b in out] == [["role", "first token"], ["late"]]
    assert out[0][0] < 0.05 + INTERVAL_S / 2  # not held for an interval
    assert out[1][0] < 1.05 + INTERVAL_S / 2  # after a quiet interval: at once again


def test_a_burst_after_a_send_waits_for_the_interval_and_leaves_as_one_batch() -> None:
    schedule = [(0.01, "a")] + [(0.02, f"t{i}") for i in range(5)] + [(1.0, "z")]
    out = asyncio.run(timed(batched(engine(schedule), INTERVAL_S)))
    assert [b for _, b in out] == [["a"], [f"t{i}" for i in range(5)], ["z"]]
    first, burst = out[0][0], out[1][0]
    assert burst - first >= INTERVAL_S * 0.9  # gathered for one interval, one message


def test_the_end_of_the_stream_is_not_held_for_the_interval() -> None:
    out = asyncio.run(timed(batched(engine([(0.01, "a"), (0.01, "b")]), 5.0)))
    assert [b for _, b in out] == [["a"], ["b"]]
    assert out[-1][0] < 1.0  # the interval is 5 s: the end left when the engine ended


def test_an_engine_error_follows_what_came_before_it() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0.01)
        raise RuntimeError("engine died")

    async def consume() -> list[list[str]]:
        got = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for batch in batched(failing(), INTERVAL_S):
                got.append(batch)
        return got

    assert asyncio.run(consume()) == [["a"]]


def test_closing_the_output_cancels_the_read_of_the_engine() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "t"
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    async def consume() -> bool:
        out = batched(endless(), INTERVAL_S)
        await out.__anext__()
        await out.aclose()  # the client went away
        await asyncio.wait_for(closed.wait(), 1.0)
        return closed.is_set()

    assert asyncio.run(consume())


def test_no_interval_sends_every_item_alone() -> None:
    out = asyncio.run(timed(batched(engine([(0, "a"), (0, "b"), (0.01, "c")]), 0)))
    assert [b for _, b in out] == [["a"], ["b"], ["c"]]


def test_the_overridden_upstream_method_is_still_upstreams_stream_hook() -> None:
    """CacheRouteServer overrides LLMServer._batch_output_stream (private): upstream
    must still route streams through it and read the interval the same way."""
    from ray.serve.llm.deployment import LLMServer

    from serving.replica.server import CacheRouteServer

    assert "self._batch_output_stream(" in inspect.getsource(LLMServer._run_request)
    assert "stream_batching_interval_ms" in inspect.getsource(LLMServer._get_batch_interval_ms)
    assert (inspect.signature(CacheRouteServer._batch_output_stream).parameters.keys()
            == inspect.signature(LLMServer._batch_output_stream).parameters.keys())
