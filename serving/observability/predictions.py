"""What the router predicted for each request, from Serve's request router to the ingress.

The router decides with a prediction: the leading prompt blocks it believes the chosen
replica holds. The engine reports what it really served from its prefix cache in the
response's usage, which only the ingress sees. Serve runs the router on its own event
loop and thread and gives the two no channel but Serve's internal request id
(serving/routing/registry.py says why), so the router writes its prediction here under
that id, per decision, and the ingress reads it when the attempt's usage arrives
(serving/observability/route_accuracy.py) and drops it when the request ends. The one
instance of a process is ``local_routers().predictions``.

A retry is decided again and overwrites the record, so each attempt is compared with
its own decision (the previous attempt's usage was read before the retry is routed).

Bounded (oldest out first) and thread-safe: the router writes on Serve's router loop,
the ingress reads on its request loop. Cost: a dict insert per decision and a pop per
request, under a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from router import Decision

# A record lives from the decision to the end of its request, so the log holds about
# the ingress's in-flight requests; the bound drops, oldest first, only records that no
# request end pops (handle calls made outside the ingress's request path).
PREDICTION_LOG_MAX_ENTRIES = 4096


def predicted_cached_tokens(decision: Decision, *, prompt_tokens: int, block_size: int) -> int:
    """Prompt tokens the decision expects the engine to serve from its prefix cache.

    The index's matched blocks, capped at what vLLM can serve: it computes the last
    prompt token even when every block is cached (its logits are needed), so a prompt
    that is a whole number of blocks gets at most all blocks but the last. Without the
    cap a healthy router would look wrong on every block-aligned prompt.
    """
    servable_blocks = max(0, prompt_tokens - 1) // block_size
    return min(decision.matched_blocks, servable_blocks) * block_size


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One decision's prediction; `replica_id` and `outcome` are its metric labels."""

    replica_id: str
    outcome: str
    cached_tokens: int


class PredictionLog:
    """The latest decision's prediction by request id, from the router's thread to the
    ingress's."""

    def __init__(self, max_entries: int = PREDICTION_LOG_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, Prediction] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(self, request_id: str, decision: Decision, *, prompt_tokens: int,
               block_size: int) -> None:
        """Called after each decision; a later one for the same request replaces it."""
        if not request_id:
            return
        prediction = Prediction(
            replica_id=decision.replica_id, outcome=str(decision.outcome),
            cached_tokens=predicted_cached_tokens(decision, prompt_tokens=prompt_tokens,
                                                  block_size=block_size))
        with self._lock:
            self._entries.pop(request_id, None)
            self._entries[request_id] = prediction
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def get(self, request_id: str) -> Prediction | None:
        """The latest decision's prediction, left in place for a retry's comparison."""
        with self._lock:
            return self._entries.get(request_id)

    def pop(self, request_id: str) -> Prediction | None:
        with self._lock:
            return self._entries.pop(request_id, None)
