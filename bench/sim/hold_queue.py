"""Requests the router could not place yet, first come first served per replica.

Serve retries a request whose candidates are all at ``max_ongoing_requests``
until one has room; in the simulator the request waits here, and a replica that
frees a slot takes the oldest request it may serve. A request that may take any
replica waits in one FIFO; one limited to candidates (``ray-prefix``: the
replicas holding its prefix) waits in each candidate's FIFO, and the copies
left behind when it is taken are skipped when they reach a head.

``add`` returns a ticket; ``take(ticket)`` removes a request still waiting (the
spill wait's timeout, ``loop.py``). Cost: ``add`` O(candidates); ``pop_for`` O(1)
amortised (each stale copy is skipped once); ``take`` O(1). A scan of one shared FIFO would be O(waiting) per freed slot,
which an overloaded ``ray-prefix`` fleet (a hot tenant pinned to one replica)
turns into hours.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from bench.sim.prompts import SimRequest


class HoldQueue:
    __slots__ = ("_any", "_by_replica", "_seq", "_waiting")

    def __init__(self) -> None:
        self._seq = 0
        self._any: deque[tuple[int, SimRequest]] = deque()
        self._by_replica: dict[str, deque[tuple[int, SimRequest]]] = {}
        # Limited requests still waiting, by sequence number (their copies may linger).
        self._waiting: dict[int, SimRequest] = {}

    def __len__(self) -> int:
        return len(self._any) + len(self._waiting)

    def add(self, request: SimRequest, candidates: Iterable[str] | None) -> int:
        """Hold ``request`` for any replica (``candidates`` None) or for one of these;
        returns its ticket."""
        self._seq += 1
        entry = (self._seq, request)
        if candidates is None:
            self._any.append(entry)
            return self._seq
        self._waiting[self._seq] = request
        for replica in candidates:
            self._by_replica.setdefault(replica, deque()).append(entry)
        return self._seq

    def take(self, ticket: int) -> SimRequest | None:
        """The request held for candidates under ``ticket``, removed; None if a
        replica took it already."""
        return self._waiting.pop(ticket, None)

    def pop_for(self, replica: str) -> SimRequest | None:
        """The oldest held request that ``replica`` may serve, removed; None if none."""
        mine = self._by_replica.get(replica)
        waiting = self._waiting
        while mine and mine[0][0] not in waiting:
            mine.popleft()  # a copy of a request another replica took
        anyone = self._any
        if mine and (not anyone or mine[0][0] < anyone[0][0]):
            seq, request = mine.popleft()
            del waiting[seq]
            return request
        if anyone:
            return anyone.popleft()[1]
        return None
