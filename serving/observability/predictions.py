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

Bounded and thread-safe as every request log (serving/observability/request_log.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from router import Decision
from serving.observability.request_log import REQUEST_LOG_MAX_ENTRIES, RequestLog

PREDICTION_LOG_MAX_ENTRIES = REQUEST_LOG_MAX_ENTRIES


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


class PredictionLog(RequestLog[Prediction]):
    """The latest decision's prediction by request id, from the router's thread to the
    ingress's (serving/observability/request_log.py); `get` leaves it in place for a
    retry's comparison."""

    def __init__(self, max_entries: int = PREDICTION_LOG_MAX_ENTRIES) -> None:
        super().__init__(max_entries)

    def record(self, request_id: str, decision: Decision, *, prompt_tokens: int,
               block_size: int) -> None:
        """Called after each decision; a later one for the same request replaces it."""
        prediction = Prediction(
            replica_id=decision.replica_id, outcome=str(decision.outcome),
            cached_tokens=predicted_cached_tokens(decision, prompt_tokens=prompt_tokens,
                                                  block_size=block_size))
        self.update(request_id, lambda previous: prediction)
