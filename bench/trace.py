"""The benchmark trace: one JSON object per line, one request per object.

    {"t": 0.42, "session": null, "tenant": "t03", "max_tokens": 8,
     "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]}

* ``t``: arrival time in seconds from the start of the run (open-loop replay
  sends the request then; fixed-concurrency replay only keeps the order).
* ``session``: a conversation id, sent as the request's ``user`` field (the
  session key cacheroute routes by when ``session_affinity`` is on); null for
  independent requests.
* ``tenant``: a label for reports only; never sent.
* exactly one of ``messages`` (a chat request) and ``prompt`` (a completion).
* ``max_tokens``: the generation cap sent with the request.

Keys are written sorted, so a saved trace is byte-identical for identical
requests and can be diffed or hashed to prove two runs replayed the same load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FIELDS = frozenset({"t", "session", "tenant", "messages", "prompt", "max_tokens"})


class TraceFormatError(ValueError):
    """A trace line that cannot be replayed; the message names the line and the reason."""


@dataclass(frozen=True, kw_only=True)
class TraceRequest:
    t: float
    max_tokens: int
    messages: tuple[Mapping[str, str], ...] | None = None
    prompt: str | None = None
    session: str | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages and prompt must be given")
        if not (isinstance(self.t, (int, float)) and math.isfinite(self.t) and self.t >= 0):
            raise ValueError(f"t must be a finite number >= 0, got {self.t!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("messages must not be empty")
            for message in self.messages:
                if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                        or not isinstance(message.get("content"), str):
                    raise ValueError("each message needs a string role and a string content")
        for name in ("session", "tenant", "prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null, got {type(value).__name__}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "t": self.t,
            "session": self.session,
            "tenant": self.tenant,
            "max_tokens": self.max_tokens,
        }
        if self.messages is not None:
            data["messages"] = [dict(m) for m in self.messages]
        else:
            data["prompt"] = self.prompt
        return data

    @classmethod
    def from_json(cls, data: Any) -> TraceRequest:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        unknown = set(data) - _FIELDS
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "t" not in data or "max_tokens" not in data:
            raise ValueError("t and max_tokens are required")
        messages = data.get("messages")
        if messages is not None:
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
            messages = tuple(dict(m) if isinstance(m, dict) else m for m in messages)
        return cls(
            t=data["t"],
            max_tokens=data["max_tokens"],
            messages=messages,
            prompt=data.get("prompt"),
            session=data.get("session"),
            tenant=data.get("tenant"),
        )


def dumps_trace(requests: Iterable[TraceRequest]) -> str:
    return "".join(json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
                   for r in requests)


def save_trace(path: str | Path, requests: Iterable[TraceRequest]) -> None:
    Path(path).write_text(dumps_trace(requests), encoding="utf-8")


def load_trace(path: str | Path) -> list[TraceRequest]:
    """Read a JSONL trace; blank lines are skipped. Raises ``TraceFormatError``."""
    requests = []
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                requests.append(TraceRequest.from_json(json.loads(line)))
            except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
                raise TraceFormatError(f"{path}:{lineno}: {err}") from None
    return requests
