"""A record per request id, handed from Serve's router thread to the ingress's loop.

Serve runs the request router on its own event loop and thread and gives it no channel
to the ingress but Serve's internal request id (serving/routing/registry.py says why),
so what the router knows of a request is written here under that id and read or
popped by the ingress. The route log (tracing) and the prediction log (routing
accuracy) are two of these.

Bounded, oldest out first: a record lives from the decision to the end of its request,
so a log holds about the ingress's in-flight requests; the bound only drops records
that no request end pops (handle calls made outside the ingress's request path).
Thread-safe; cost: a dict insert per write and a pop per request, under a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

REQUEST_LOG_MAX_ENTRIES = 4096


class RequestLog(Generic[T]):
    """Records by request id, bounded and thread-safe (module docstring)."""

    def __init__(self, max_entries: int = REQUEST_LOG_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def update(self, request_id: str, make: Callable[[T | None], T]) -> None:
        """Replace the request's record with ``make(previous record or None)``; an empty
        id (a call outside any request) is not recorded."""
        if not request_id:
            return
        with self._lock:
            self._entries[request_id] = make(self._entries.pop(request_id, None))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def get(self, request_id: str) -> T | None:
        with self._lock:
            return self._entries.get(request_id)

    def pop(self, request_id: str) -> T | None:
        with self._lock:
            return self._entries.pop(request_id, None)
