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
"""

from __future__ import annotations

from enum import Enum

from prometheus_client import Counter, Gauge

from serving.observability.telemetry import REGISTRY


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


RETRIES = Counter("cacheroute_failover_retries", "Attempts started again after a replica "
                  "failure.", ["reason", "phase"], registry=REGISTRY)
RESUMED = Counter("cacheroute_failover_resumed_streams",
                  "Broken streams finished by another replica.", registry=REGISTRY)
FAILED = Counter("cacheroute_failover_failed", "Requests failed to the client after "
                 "failover gave up.", ["reason"], registry=REGISTRY)
EJECTIONS = Counter("cacheroute_failover_ejections", "Replicas ejected from the ring for "
                    "lack of engine progress, and readmitted.", ["change"], registry=REGISTRY)
EJECTED = Gauge("cacheroute_router_ejected_replicas", "Replicas out of the ring (hung).",
                registry=REGISTRY)

# Every label value exists from the start, so rate() sees a 0 before the first event.
for _r in FailureReason:
    for _p in Phase:
        RETRIES.labels(reason=_r.value, phase=_p.value)
for _f in ("exhausted", "not_resumable"):
    FAILED.labels(reason=_f)
for _c in ("ejected", "readmitted"):
    EJECTIONS.labels(change=_c)


class FailoverMetrics:
    """The failover loop's and the router's view onto the process-wide metrics."""

    def on_retry(self, reason: FailureReason, phase: Phase) -> None:
        RETRIES.labels(reason=reason.value, phase=phase.value).inc()

    def on_resumed(self) -> None:
        RESUMED.inc()

    def on_failed(self, reason: str) -> None:
        FAILED.labels(reason=reason).inc()

    def on_ejection(self, change: str) -> None:
        EJECTIONS.labels(change=change).inc()

    def on_ejected(self, ejected_now: int) -> None:
        # Also after membership changes: a replica that leaves while out of the ring
        # (Serve replaced it) is no longer out.
        EJECTED.set(ejected_now)
