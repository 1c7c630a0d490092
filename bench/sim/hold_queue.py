"""Serve's own retries: requests whose candidates were all full, first come first served.

Serve retries a request whose candidates are all at ``max_ongoing_requests``
until one has room; in the simulator the request waits here, and a replica that
frees a slot takes the oldest request it may serve. A request that may take any
replica waits in one FIFO; one limited to candidates (``ray-prefix``: the
replicas holding its prefix) waits in each candidate's FIFO, and the copies
left behind when it is taken are skipped when they reach a head. This is Serve's
behaviour, for every policy; the waits ``cacheroute`` adds itself are the routing
core's (router/admission.py), simulated by running it.

Cost: ``add`` O(candidates); ``pop_for`` O(1) amortised (each stale copy is skipped
once). A scan of one shared FIFO would be O(waiting) per freed slot, which an
overloaded ``ray-prefix`` fleet (a hot tenant pinned to one replica) turns into hours.
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

    def add(self, request: SimRequest, candidates: Iterable[str] | None) -> None:
        """Hold ``request`` for any replica (``candidates`` None) or for one of these."""
        self._seq += 1
        entry = (self._seq, request)
        if candidates is None:
            self._any.append(entry)
            return
        self._waiting[self._seq] = request
        for replica in candidates:
            self._by_replica.setdefault(replica, deque()).append(entry)

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
