"""The OpenAI `usage` an engine's output item carries, however the item is shaped.

Read by tracing (serving/observability/tracing.py: the replica's `llm.generate` span)
and by the routing-accuracy counters (serving/observability/route_accuracy.py: the
ingress compares `cached_tokens` with the router's prediction). Usage rides on the
response object of a non-streaming call, and on the last SSE chunk of a stream that
asked for `stream_options.include_usage` (on every chunk with
`continuous_usage_stats`).

Cost: nothing for an item that names no usage (a substring check); one JSON parse per
`data:` line of an item that does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # `prompt_tokens_details.cached_tokens`: None when the engine does not report it.
    cached_tokens: int | None


def _usage_from_dict(usage: Mapping[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                 details.get("cached_tokens"))


def usage_of(item: Any) -> Usage | None:
    """The usage an output item carries: a response object (non-streaming), an SSE
    string `data: {...}` (streaming, with `stream_options.include_usage`), or a list of
    them (ray.serve.llm batches streamed chunks)."""
    if isinstance(item, list):
        found = None
        for part in item:
            found = usage_of(part) or found
        return found
    if isinstance(item, str):
        # Cheap pre-check: only the usage chunk names prompt_tokens.
        if '"prompt_tokens"' not in item:
            return None
        found = None
        for line in item.splitlines():
            if line.startswith("data: {"):
                usage = json.loads(line[len("data: "):]).get("usage")
                if usage:
                    found = _usage_from_dict(usage)
        return found
    usage = getattr(item, "usage", None)
    if usage is None:
        return None
    details = getattr(usage, "prompt_tokens_details", None)
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0,
                 getattr(details, "cached_tokens", None))
