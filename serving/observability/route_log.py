"""Routing decisions by request id, from Serve's request router to the ingress's traces.

Serve runs the request router on its own event loop and thread, so the ingress's span
never reaches ``choose_replicas``: the router records its decision here under Serve's
internal request id, and the ingress's tracing middleware pops the record when the
response ends and writes it as the ``cacheroute.route`` span
(serving/observability/tracing.py). The one instance of a process is
``local_routers().route_log`` (serving/routing/registry.py).

Cost: a dict insert per decision and a pop per response, under a lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from router import Decision
from serving.observability.request_log import REQUEST_LOG_MAX_ENTRIES, RequestLog

ROUTE_LOG_MAX_ENTRIES = REQUEST_LOG_MAX_ENTRIES


@dataclass(frozen=True, kw_only=True)
class RouteRecord:
    """One request's routing, as the router saw it; becomes the `cacheroute.route` span."""

    # Wall-clock span bounds: from the first attempt's start to the last decision.
    start_ns: int
    end_ns: int
    replica_id: str
    outcome: str
    matched_blocks: int
    total_blocks: int
    prompt_tokens: int
    # Serve asks the router again while every replica it was offered is full: attempts > 1.
    attempts: int


class RouteLog(RequestLog[RouteRecord]):
    """Routing decisions by request id, from the router's thread to the ingress's
    (serving/observability/request_log.py): the router writes on Serve's router loop,
    the middleware pops on the ingress loop."""

    def __init__(self, max_entries: int = ROUTE_LOG_MAX_ENTRIES, *,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(max_entries)
        self._clock_ns = clock_ns

    def record(self, request_id: str, decision: Decision, *, prompt_tokens: int,
               elapsed_s: float) -> None:
        """Called right after a decision that took `elapsed_s` (tokenising included)."""
        end_ns = self._clock_ns()
        start_ns = end_ns - int(elapsed_s * 1e9)

        def make(previous: RouteRecord | None) -> RouteRecord:
            return RouteRecord(
                start_ns=previous.start_ns if previous else start_ns, end_ns=end_ns,
                replica_id=decision.replica_id, outcome=str(decision.outcome),
                matched_blocks=decision.matched_blocks, total_blocks=decision.total_blocks,
                prompt_tokens=prompt_tokens,
                attempts=previous.attempts + 1 if previous else 1)

        self.update(request_id, make)
