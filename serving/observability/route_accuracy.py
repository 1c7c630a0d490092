"""Routing accuracy: the router's predicted cached tokens against the engine's delivered ones.

The router predicts, per decision, how many prompt tokens the chosen replica will serve
from its prefix cache (serving/observability/predictions.py); the engine reports what it
did serve in the response's `usage.prompt_tokens_details.cached_tokens`. The ingress
joins the two per attempt, by Serve's request id, and counts both on `/metrics`:

- `cacheroute_predicted_cached_tokens_total{replica,outcome}`
- `cacheroute_delivered_cached_tokens_total{replica,outcome}`

`replica` is the Serve replica the router chose, `outcome` the decision's Outcome
(router/outcome.py): bounded label values only, since /metrics is public. Both are
counted for exactly the same attempts: an attempt whose output carries no
`cached_tokens` (a stream without usage, a failure before any output, a baseline
policy that predicts nothing) is counted on neither side, so the ratio compares like
with like. With failover on, every stream carries usage upstream (the failover asks
for it, serving/failover/stream_resume.py) and is counted whatever the client asked.

With the router and the engines in parity (same tokens, block size, hash seed and
algorithm) delivered tracks predicted; when they drift, the router keeps predicting
hits the engines do not deliver, and `CacheRouteRoutingPredictionDiverged`
(monitoring/rules.py) fires. docs/operations/metrics.md says what to check.

Cost per attempt: a substring check per output item until the usage is found, one JSON
parse of the chunk that carries it, a dict read and two counter increments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from serving.observability.metrics import MetricSet, counter
from serving.observability.predictions import PredictionLog
from serving.observability.usage import usage_of


class RouteAccuracyMetrics(MetricSet):
    predicted = counter("cacheroute_predicted_cached_tokens",
                        "Prompt tokens the router predicted the chosen replica would serve "
                        "from its prefix cache, for attempts whose usage reported cached "
                        "tokens.", ["replica", "outcome"])
    delivered = counter("cacheroute_delivered_cached_tokens",
                        "Prompt tokens the engine served from its prefix cache "
                        "(usage.prompt_tokens_details.cached_tokens), for the same attempts.",
                        ["replica", "outcome"])


def _names_cached_tokens(item: Any) -> bool:
    """Whether an item may carry `cached_tokens`: streamed text that names it, or an
    object (a non-streaming response), whose usage is an attribute."""
    if isinstance(item, list):
        return any(_names_cached_tokens(part) for part in item)
    if isinstance(item, str):
        return '"cached_tokens"' in item
    return True


class RouteAccuracy:
    """Counts each attempt's predicted and delivered cached tokens (module docstring)."""

    def __init__(self, predictions: PredictionLog,
                 metrics: RouteAccuracyMetrics | None = None) -> None:
        self._predictions = predictions
        self._metrics = metrics or RouteAccuracyMetrics()

    def count(self, request_key: str, delivered: int) -> bool:
        """Count one attempt whose engine served `delivered` tokens from cache against
        its decision; False when the router predicted nothing for it."""
        prediction = self._predictions.get(request_key) if request_key else None
        if prediction is None:
            return False
        labels = {"replica": prediction.replica_id, "outcome": prediction.outcome}
        self._metrics.predicted.labels(**labels).inc(prediction.cached_tokens)
        self._metrics.delivered.labels(**labels).inc(max(0, delivered))
        return True

    async def observe(self, items: AsyncIterator[Any],
                      request_key: str) -> AsyncIterator[Any]:
        """The items of one attempt, unchanged; its usage counted when it passes.

        Counted at the first usage that reports `cached_tokens`: the engine fixes that
        number at prefill, so later chunks (continuous usage) repeat it, and a stream
        cut short afterwards was still served what it reported.
        """
        counted = not request_key
        try:
            async for item in items:
                if not counted and _names_cached_tokens(item):
                    usage = usage_of(item)
                    if usage is not None and usage.cached_tokens is not None:
                        counted = True
                        self.count(request_key, usage.cached_tokens)
                yield item
        finally:
            # Closing this wrapper (failover's hang watch, a client gone) must reach the
            # replica's stream, which aborts the request when closed.
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    def end(self, request_key: str) -> None:
        """The request is over: its prediction is not needed any more."""
        if request_key:
            self._predictions.pop(request_key)
