"""Prometheus metrics of failover (serving/failover/failover.py) and hang ejection, on `/metrics`.

Names as scraped:
- `cacheroute_failover_retries_total{reason,phase}`: attempts started again after a
  replica failure. `reason`: `replica_died` (the replica actor is gone),
  `engine_error` (the engine failed the request: an error response, a 5xx chunk
  mid-stream, or an exception from the replica), `hung` (the replica was ejected
  while the attempt waited). `phase`: `before_output` (nothing reached the client:
  a plain retry) or `mid_stream` (a continuation of a stream already under way).
- `cacheroute_failover_resumed_streams_total`: streams that broke and were finished
  by another replica (counted once per stream, when it completes).
- `cacheroute_failover_failed_total{reason}`: requests failed to the client after
  failover gave up: `exhausted` (every attempt failed) or `not_resumable` (a
  broken stream the service cannot continue: n > 1, tools, structured output, echo).
- `cacheroute_failover_ejections_total{change}`: replicas `ejected` from the ring for
  lack of engine progress, and `readmitted` when they progressed again.
- `cacheroute_router_ejected_replicas`: replicas out of the ring now.

Every label value exists from the start, so `rate()` sees a 0 before the first event
(serving/observability/metrics.py: how the app declares a metric).
"""

from __future__ import annotations

from enum import Enum

from serving.observability.metrics import MetricSet, counter, gauge


class FailureReason(str, Enum):
    REPLICA_DIED = "replica_died"
    ENGINE_ERROR = "engine_error"
    HUNG = "hung"

    def __str__(self) -> str:
        return self.value


class Phase(str, Enum):
    BEFORE_OUTPUT = "before_output"
    MID_STREAM = "mid_stream"

    def __str__(self) -> str:
        return self.value


class FailoverMetrics(MetricSet):
    """The failover loop's and the router's view onto the process-wide metrics."""

    retries = counter("cacheroute_failover_retries", "Attempts started again after a replica "
                      "failure.", ["reason", "phase"],
                      initial=[(r.value, p.value) for r in FailureReason for p in Phase])
    resumed = counter("cacheroute_failover_resumed_streams",
                      "Broken streams finished by another replica.")
    failed = counter("cacheroute_failover_failed", "Requests failed to the client after "
                     "failover gave up.", ["reason"], initial=["exhausted", "not_resumable"])
    ejections = counter("cacheroute_failover_ejections", "Replicas ejected from the ring for "
                        "lack of engine progress, and readmitted.", ["change"],
                        initial=["ejected", "readmitted"])
    ejected = gauge("cacheroute_router_ejected_replicas", "Replicas out of the ring (hung).")

    def on_retry(self, reason: FailureReason, phase: Phase) -> None:
        self.retries.labels(reason=reason.value, phase=phase.value).inc()

    def on_resumed(self) -> None:
        self.resumed.inc()

    def on_failed(self, reason: str) -> None:
        self.failed.labels(reason=reason).inc()

    def on_ejection(self, change: str) -> None:
        self.ejections.labels(change=change).inc()

    def on_ejected(self, ejected_now: int) -> None:
        # Also after membership changes: a replica that leaves while out of the ring
        # (Serve replaced it) is no longer out.
        self.ejected.set(ejected_now)
