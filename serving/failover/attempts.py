"""Where each request's attempts went, shared by the router and the ingress's failover.

The ingress (serving/failover/failover.py) must know which replica served an attempt that
failed, so the retry avoids it; only the request router knows. The two meet in this
process's ``local_routers().attempts`` (serving/routing/registry.py says why there is no
other way), keyed by Serve's internal request id, the same for every attempt of one
HTTP request. The router writes, per decision:

    record(key, replica)      the replica the latest attempt of `key` went to
    avoid(key, replica)       the failover loop: a retry of `key` must skip it
    next_attempt(key)         the failover loop: the retry is not routed yet
    avoided(key)              the router, on the retry: replicas to route around
    set_ejected(ids)          the router: replicas out of the ring (hung)
    is_ejected(id)            the failover loop, while an attempt waits for output

Bounded (oldest request first out) and thread-safe: the router runs on Serve's
router loop, the ingress on its request loop. Cost: a dict operation under a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

# Requests remembered at once: far more than one ingress has in flight; an entry a
# finished request never `forget`s (a client that went away) ages out.
ATTEMPT_LOG_MAX_ENTRIES = 16_384


@dataclass
class _Entry:
    replica: str | None = None
    avoided: set[str] = field(default_factory=set)


class AttemptLog:
    def __init__(self, max_entries: int = ATTEMPT_LOG_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._ejected: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return entry

    def record(self, key: str, replica: str) -> None:
        if not key:
            return
        with self._lock:
            self._entry(key).replica = replica

    def next_attempt(self, key: str) -> None:
        """The request is about to be sent again: until the router decides, it is on
        no replica (an ejection of the previous one must not end the new attempt)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.replica = None

    def replica_of(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.replica if entry else None

    def avoid(self, key: str, replica: str) -> None:
        if not key:
            return
        with self._lock:
            self._entry(key).avoided.add(replica)

    def avoided(self, key: str) -> frozenset[str]:
        with self._lock:
            entry = self._entries.get(key)
            return frozenset(entry.avoided) if entry else frozenset()

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def set_ejected(self, replicas: frozenset[str]) -> None:
        self._ejected = frozenset(replicas)

    def is_ejected(self, replica: str) -> bool:
        return replica in self._ejected
