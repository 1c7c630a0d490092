"""Is a server-sent-event stream whole? The client-side definition of a broken stream.

An OpenAI-style stream is a sequence of ``data: {json}`` events ended by
``data: [DONE]``. A stream that answered 200 and started is *broken* when any of:

- ``error``: an event carries an ``error`` object (vLLM and Ray Serve report a
  failure after the headers were sent this way), or is not valid JSON;
- ``no_done``: the body ended (or the connection dropped: ``transport``) before
  ``[DONE]``;
- ``inconsistent_ids``: the chunks do not all carry the same ``id`` -- a stream
  resumed on another replica must look like one response to the client;
- ``after_done``: data arrived after ``[DONE]``.

A request that fails before its stream starts (a non-200 status) is a failed
request, not a broken stream; the load generator counts it as failed only.

The checker is fed one line at a time (O(1) state besides the text), so the load
generator can check a stream while reading it and record where it broke.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"


@dataclass(frozen=True, kw_only=True)
class StreamVerdict:
    """The outcome of one stream; ``reason`` is None when the stream is whole."""

    reason: str | None
    detail: str | None
    chunks: int
    text: str
    usage: dict[str, Any] | None
    stream_id: str | None

    @property
    def ok(self) -> bool:
        return self.reason is None


class StreamChecker:
    """Feed ``line`` for each line of the body, ``transport_error`` if reading failed,
    then read ``verdict()``. The first problem seen is the one reported."""

    def __init__(self) -> None:
        self._chunks = 0
        self._parts: list[str] = []
        self._usage: dict[str, Any] | None = None
        self._id: str | None = None
        self._done = False
        self._reason: str | None = None
        self._detail: str | None = None

    def _broken(self, reason: str, detail: str) -> None:
        if self._reason is None:
            self._reason, self._detail = reason, detail

    def line(self, raw: str) -> None:
        line = raw.strip()
        if not line.startswith("data:"):
            return  # blank separators, comments, `event:`/`id:` fields
        data = line[len("data:"):].strip()
        if self._done:
            self._broken("after_done", data[:200])
            return
        if data == DONE:
            self._done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            self._broken("error", f"not JSON: {data[:200]}")
            return
        if not isinstance(event, dict):
            self._broken("error", f"not an object: {data[:200]}")
            return
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            self._broken("error", str(message)[:300])
            return
        self._chunks += 1
        chunk_id = event.get("id")
        if chunk_id is not None:
            if self._id is None:
                self._id = str(chunk_id)
            elif str(chunk_id) != self._id:
                self._broken("inconsistent_ids", f"{self._id} then {chunk_id}")
        if event.get("usage"):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if piece:
                self._parts.append(piece)

    def transport_error(self, exc: BaseException) -> None:
        self._broken("transport", f"{type(exc).__name__}: {exc}"[:300])

    def verdict(self) -> StreamVerdict:
        if not self._done:
            self._broken("no_done", f"ended after {self._chunks} chunk(s) without [DONE]")
        return StreamVerdict(reason=self._reason, detail=self._detail, chunks=self._chunks,
                             text="".join(self._parts), usage=self._usage,
                             stream_id=self._id)


def check_lines(lines: Iterable[str]) -> StreamVerdict:
    """The verdict on a complete body given as lines (tests, recorded streams)."""
    checker = StreamChecker()
    for raw in lines:
        checker.line(raw)
    return checker.verdict()
