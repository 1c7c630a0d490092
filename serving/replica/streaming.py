"""The replica's streamed output: what is ready goes at once, bursts are batched.

Upstream's `LLMServer` sends every stream through Ray's `Batcher`, which waits one whole
interval (`stream_batching_interval_ms`, 50 ms by default) before it sends anything and
then one batch per interval. Batching pays when tokens come faster than the interval:
one Ray message per interval instead of one per token, across many streams. But the
wait before the first batch is pure latency: every streamed first token waited up to a
whole interval in the replica after the engine produced it, whatever the router.

``batched`` keeps the batching and drops that wait. A batch is sent as soon as an item
arrives after a quiet interval, with every item already queued beside it (vLLM yields
the role chunk and the first content chunk back to back: they leave together); after
a send, items arriving within the interval wait for its end and leave as one batch;
the stream's end is sent without waiting. So the first token, and any token after a
pause, is never held back; a fast stream still costs one message per interval.
Upstream is fixing the same first-batch wait (ray-project/ray#64534); once the pinned
Ray has it, `serving/replica/server.py` can drop this override.

Cancellation propagates: closing the output (a client gone) cancels the read of the
engine's stream, as upstream's `Batcher` does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()  # queued after the engine's last item (or with its exception)


async def batched(stream: AsyncIterator[T], interval_s: float,
                  clock: Callable[[], float] = time.monotonic) -> AsyncIterator[list[T]]:
    """``stream``'s items as lists: see the module docstring. ``interval_s`` <= 0
    sends every item alone, at once."""
    if interval_s <= 0:
        async for item in stream:
            yield [item]
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()
    failure: list[BaseException] = []

    async def read() -> None:
        try:
            async for item in stream:
                queue.put_nowait(item)
        except Exception as err:  # re-raised to the consumer, after what came before it
            failure.append(err)
        finally:
            queue.put_nowait(_END)

    reader = asyncio.create_task(read())
    try:
        sent_at: float | None = None
        while True:
            if sent_at is not None:  # within the interval of the last send: gather
                remaining = sent_at + interval_s - clock()
                if remaining > 0:
                    await _first_of(reader, remaining)
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            ended = items[-1] is _END
            out = [i for i in items if i is not _END]
            if out:
                yield out
                sent_at = clock()
            if ended:
                if failure:
                    raise failure[0]
                return
    finally:
        if not reader.done():
            reader.cancel()


async def _first_of(reader: asyncio.Task[None], timeout_s: float) -> None:
    """Wait ``timeout_s``, or less if the engine's stream ends first (its last items
    then leave without waiting out the interval)."""
    await asyncio.wait({reader}, timeout=timeout_s)
