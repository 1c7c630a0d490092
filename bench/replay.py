"""Replays a trace against a running service and measures every request.

Two schedules:

* open loop (``concurrency=None``): request ``i`` is sent at ``t_i`` seconds after
  the start, whether or not earlier ones finished -- arrivals do not slow down
  when the service does, so queueing shows up in TTFT as it would for users;
* fixed concurrency: ``concurrency`` workers send the requests in trace order,
  each starting the next as soon as its previous one finished.

Each request is streamed with ``stream_options={"include_usage": True}``:
TTFT is the time to the first chunk carrying generated text (the first chunk
with a choice if none carries text), end-to-end the time to the end of the
stream, and the final usage chunk gives ``prompt_tokens`` and
``prompt_tokens_details.cached_tokens``. A trace request's ``session`` goes out as
the body's ``user`` and the ``x-session-id`` header. A failure is recorded as the request's
``error`` (exception type and message); no request is retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.trace import TraceRequest

SESSION_HEADER = "x-session-id"

# A request slower than this is recorded as an error rather than waited for.
REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True, kw_only=True)
class RequestResult:
    index: int
    policy: str
    tenant: str | None
    # Seconds from the start of the replay to the send, and to the end.
    sent_s: float
    done_s: float
    ttft_s: float | None
    e2e_s: float | None
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None
    error: str | None


async def _send(client: Any, model: str, request: TraceRequest) -> dict[str, Any]:
    """Stream one request; returns ttft/e2e offsets (from the send) and usage."""
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.session is not None:
        # cacheroute's session key: Serve's request metadata takes the header, the
        # router falls back to the body's `user`; send both as a client would.
        common["user"] = request.session
        common["extra_headers"] = {SESSION_HEADER: request.session}
    start = time.perf_counter()
    if request.messages is not None:
        stream = await client.chat.completions.create(
            messages=[dict(m) for m in request.messages], **common)
    else:
        stream = await client.completions.create(prompt=request.prompt, **common)
    first_choice: float | None = None
    first_text: float | None = None
    usage = None
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            if first_choice is None:
                first_choice = now
            choice = chunk.choices[0]
            delta = getattr(choice, "delta", None)
            text = delta.content if delta is not None else getattr(choice, "text", None)
            if text and first_text is None:
                first_text = now
    end = time.perf_counter()
    first = first_text if first_text is not None else first_choice
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    return {
        "ttft_s": None if first is None else first - start,
        "e2e_s": end - start,
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        "cached_tokens": getattr(details, "cached_tokens", None),
        "completion_tokens": getattr(usage, "completion_tokens", None),
    }


async def replay(trace: Sequence[TraceRequest], *, base_url: str, model: str, policy: str,
                 concurrency: int | None = None,
                 on_done: Callable[[RequestResult], None] = lambda _: None,
                 timeout_s: float = REQUEST_TIMEOUT_S,
                 http_client: Any = None) -> list[RequestResult]:
    """Send every request of ``trace``; results in trace order.

    ``http_client`` (an ``httpx.AsyncClient``) replaces the SDK's own, e.g. one with
    an ``httpx.MockTransport`` in tests.
    """
    from openai import AsyncOpenAI

    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                         timeout=timeout_s, http_client=http_client)
    results: list[RequestResult | None] = [None] * len(trace)
    origin = time.perf_counter()

    async def run_one(index: int) -> None:
        request = trace[index]
        sent = time.perf_counter() - origin
        fields: dict[str, Any] = {"ttft_s": None, "e2e_s": None, "prompt_tokens": None,
                                  "cached_tokens": None, "completion_tokens": None}
        error = None
        try:
            fields = await asyncio.wait_for(_send(client, model, request), timeout_s)
        except Exception as err:  # noqa: BLE001 -- every failure is a data point, not a crash
            error = f"{type(err).__name__}: {err}"[:500]
        result = RequestResult(index=index, policy=policy, tenant=request.tenant, sent_s=sent,
                               done_s=time.perf_counter() - origin, error=error, **fields)
        results[index] = result
        on_done(result)

    try:
        if concurrency is None:
            tasks = []
            for index, request in enumerate(trace):
                delay = request.t - (time.perf_counter() - origin)
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(run_one(index)))
            await asyncio.gather(*tasks)
        else:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(len(trace)):
                queue.put_nowait(index)

            async def worker() -> None:
                while not queue.empty():
                    await run_one(queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(trace)))))
    finally:
        await client.close()
    return [r for r in results if r is not None]
