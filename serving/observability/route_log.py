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

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from router import Decision

# A record lives from the decision to the end of its response, so the log holds about
# the ingress's in-flight requests (replicas x max_ongoing_requests); the bound only
# drops records that no middleware pops (handle calls made outside an HTTP request),
# oldest first.
ROUTE_LOG_MAX_ENTRIES = 4096


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


class RouteLog:
    """Routing decisions by request id, from the router's thread to the ingress's.

    Bounded (oldest out first) and thread-safe: the router writes on Serve's router loop,
    the middleware pops on the ingress loop.
    """

    def __init__(self, max_entries: int = ROUTE_LOG_MAX_ENTRIES, *,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._max_entries = max_entries
        self._clock_ns = clock_ns
        self._entries: OrderedDict[str, RouteRecord] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(self, request_id: str, decision: Decision, *, prompt_tokens: int,
               elapsed_s: float) -> None:
        """Called right after a decision that took `elapsed_s` (tokenising included)."""
        if not request_id:
            return
        end_ns = self._clock_ns()
        start_ns = end_ns - int(elapsed_s * 1e9)
        with self._lock:
            previous = self._entries.pop(request_id, None)
            self._entries[request_id] = RouteRecord(
                start_ns=previous.start_ns if previous else start_ns, end_ns=end_ns,
                replica_id=decision.replica_id, outcome=str(decision.outcome),
                matched_blocks=decision.matched_blocks, total_blocks=decision.total_blocks,
                prompt_tokens=prompt_tokens,
                attempts=previous.attempts + 1 if previous else 1)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def pop(self, request_id: str) -> RouteRecord | None:
        with self._lock:
            return self._entries.pop(request_id, None)
