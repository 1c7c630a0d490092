"""Failover of chat and completion requests: retry, resume, and leave a hung replica.

One `Failover.run` per request wraps the ingress's call to the engines
(`send(body) -> items`), attempt by attempt:

    attempt k ──items──▶ client            (streams: rewritten, serving/failover/stream_resume.py)
        │ fails: replica actor gone, engine error (an error response, a 5xx chunk
        │ mid-stream, an exception from the replica), or its replica was ejected
        │ as hung while the attempt waited for output
        ▼
    mark that replica avoided for this request (serving/failover/attempts.py; the router
    routes the retry around it), back off, then
        nothing sent yet   → the same request again              (phase before_output)
        a stream under way → its continuation from the text sent (phase mid_stream)
        a stream that cannot be continued (n > 1, tools, ...) → an error chunk, [DONE]
    until `max_attempts`; then the last failure reaches the client as before.

Which replica an attempt went to is the router's latest decision for the request's
Serve id; a hang is noticed by polling the router's ejected set while waiting for the
next item (every `poll_s`), never by a deadline on the request itself, so a slow but
progressing replica is never abandoned. Client errors (4xx, bad input) are never
retried: another replica would refuse them the same way.

Cost on the happy path: one task per upstream item (the hang watch) and, for streams,
one JSON parse and dump per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serving.failover.attempts import AttemptLog
from serving.config import FailoverConfig
from serving.failover.metrics import FailoverMetrics, FailureReason, Phase
from serving.failover.stream_resume import DONE_EVENT, StreamBroken, StreamResume, error_event

logger = logging.getLogger("ray.serve")

# Exception classes (by name, anywhere in the MRO) that mean the replica is gone.
# Names rather than imports keep this module free of Ray for its tests.
_REPLICA_GONE = frozenset({
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
    "NodeDiedError", "ReplicaUnavailableError", "DeploymentUnavailableError",
})
# Causes that are the client's fault: the same request fails on any replica.
_CLIENT_FAULT = frozenset({
    "VLLMClientError", "VLLMValidationError", "ValueError", "TypeError",
    "OpenAIHTTPException", "HTTPException", "RequestCancelledError", "BackPressureError",
})
# Server-side engine failures, whether raised directly or wrapped in a RayTaskError.
_ENGINE_FAULT = frozenset({"EngineDeadError", "EngineGenerateError", "VLLMServerError"})

# How often an attempt that waits for output checks whether its replica was ejected.
POLL_S = 0.5


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def classify(exc: BaseException) -> FailureReason | None:
    """The failure an exception from an attempt stands for; None: not retryable."""
    names = _names(exc)
    if names & _REPLICA_GONE:
        return FailureReason.REPLICA_DIED
    if "RequestCancelledError" in names or "BackPressureError" in names:
        return None
    if "RayTaskError" in names:
        cause = getattr(exc, "cause", None)
        if cause is not None and _names(cause) & _REPLICA_GONE:
            return FailureReason.REPLICA_DIED
        if cause is not None and _names(cause) & _CLIENT_FAULT and \
                not _names(cause) & _ENGINE_FAULT:
            return None
        return FailureReason.ENGINE_ERROR
    if names & _ENGINE_FAULT:
        return FailureReason.ENGINE_ERROR
    return None


def _error_code(item: Any) -> int | None:
    """The status of an ErrorResponse item (ray.serve.llm's), else None."""
    error = getattr(item, "error", None)
    code = getattr(error, "code", None)
    return int(code) if isinstance(code, int) else None


class AttemptFailed(Exception):
    def __init__(self, reason: FailureReason, detail: str, *,
                 error_item: Any = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        # An engine's error response, handed to the client if no retry is left.
        self.error_item = error_item


Send = Callable[[Any], AsyncIterator[Any]]


class Failover:
    def __init__(self, config: FailoverConfig, *, attempts: AttemptLog,
                 metrics: FailoverMetrics | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 poll_s: float = POLL_S) -> None:
        self._config = config
        self._attempts = attempts
        self._metrics = metrics or FailoverMetrics()
        self._sleep = sleep
        self._poll_s = poll_s

    def _backoff_s(self, retry: int) -> float:
        return min(self._config.max_backoff_s, self._config.backoff_s * 2 ** (retry - 1))

    async def run(self, body: Any, kind: str, send: Send, *,
                  request_key: str) -> AsyncIterator[Any]:
        """The items of `send(body)`, surviving replica failures. `kind` is `chat` or
        `completions`; `request_key` is Serve's internal id of the request."""
        try:
            if getattr(body, "stream", False):
                async for item in self._run_stream(body, kind, send, request_key):
                    yield item
            else:
                async for item in self._run_unary(body, send, request_key):
                    yield item
        finally:
            self._attempts.forget(request_key)

    async def _run_unary(self, body: Any, send: Send, key: str) -> AsyncIterator[Any]:
        attempt = 1
        while True:
            try:
                items = []
                async for item in self._attempt(send(body), key):
                    code = _error_code(item)
                    if code is not None and code >= 500:
                        raise AttemptFailed(FailureReason.ENGINE_ERROR,
                                            str(item.error.message), error_item=item)
                    items.append(item)
            except AttemptFailed as failure:
                if not await self._may_retry(failure, key, attempt, Phase.BEFORE_OUTPUT):
                    if failure.error_item is not None:
                        yield failure.error_item
                        return
                    raise failure.__cause__ or failure
                attempt += 1
                continue
            for item in items:
                yield item
            return

    async def _run_stream(self, body: Any, kind: str, send: Send,
                          key: str) -> AsyncIterator[Any]:
        state = StreamResume(body, kind)
        request = state.upstream_body()
        attempt = 1
        while True:
            try:
                async for item in self._attempt(send(request), key):
                    code = _error_code(item)
                    if code is not None:
                        if code >= 500:
                            raise AttemptFailed(FailureReason.ENGINE_ERROR,
                                                str(item.error.message), error_item=item)
                        yield item  # a client error before the stream: as upstream
                        return
                    try:
                        events = state.consume(item)
                    except StreamBroken as broken:
                        if broken.events:
                            yield broken.events
                        raise AttemptFailed(FailureReason.ENGINE_ERROR, broken.message) \
                            from broken
                    if events:
                        yield events
                if not state.finished:
                    yield [DONE_EVENT]
                if state.resumed:
                    self._metrics.on_resumed()
                return
            except AttemptFailed as failure:
                phase = Phase.MID_STREAM if state.started else Phase.BEFORE_OUTPUT
                if state.started and state.blocker is not None:
                    logger.warning("cacheroute failover: stream broke (%s) and cannot be "
                                   "resumed: %s", failure.detail, state.blocker)
                    self._metrics.on_failed("not_resumable")
                    yield [error_event(f"replica failed mid-stream; {state.blocker} "
                                       "streams cannot be resumed"), DONE_EVENT]
                    return
                if not await self._may_retry(failure, key, attempt, phase):
                    if state.started:
                        yield [error_event(f"replica failed mid-stream: {failure.detail}"),
                               DONE_EVENT]
                        return
                    if failure.error_item is not None:
                        yield failure.error_item
                        return
                    raise failure.__cause__ or failure
                attempt += 1
                if state.exhausted_budget():
                    yield state.closing_events()
                    self._metrics.on_resumed()
                    return
                request = state.next_attempt()

    async def _may_retry(self, failure: AttemptFailed, key: str, attempt: int,
                         phase: Phase) -> bool:
        replica = self._attempts.replica_of(key)
        if replica is not None:
            self._attempts.avoid(key, replica)
        logger.warning("cacheroute failover: attempt %d of request %s on replica %s "
                       "failed (%s, %s): %s", attempt, key or "?", replica or "?",
                       failure.reason, phase, failure.detail)
        if attempt >= self._config.max_attempts:
            self._metrics.on_failed("exhausted")
            return False
        self._metrics.on_retry(failure.reason, phase)
        await self._sleep(self._backoff_s(attempt))
        self._attempts.next_attempt(key)
        return True

    async def _attempt(self, items: AsyncIterator[Any], key: str) -> AsyncIterator[Any]:
        """The items of one attempt; raises AttemptFailed for a replica failure or when
        the attempt's replica is ejected (hung) while it waits."""
        iterator = items.__aiter__()
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(iterator.__anext__())
                while True:
                    done, _ = await asyncio.wait({pending}, timeout=self._poll_s)
                    if done:
                        break
                    replica = self._attempts.replica_of(key)
                    if replica is not None and self._attempts.is_ejected(replica):
                        pending.cancel()
                        await asyncio.wait({pending})
                        raise AttemptFailed(FailureReason.HUNG,
                                            f"replica {replica} made no progress")
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    reason = classify(exc)
                    if reason is None:
                        raise
                    raise AttemptFailed(reason, f"{type(exc).__name__}: {exc}") from exc
                yield item
        finally:
            if pending is not None and not pending.done():
                # The client went away while this attempt waited: stop it too.
                pending.cancel()
                await asyncio.wait({pending})
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # an attempt already failed; its close may too
                    pass
