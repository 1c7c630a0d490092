"""The spill wait: before leaving its prefix's owners, a request waits for one of them
to finish a request, for a bounded time.

The bounded load turns a request away from its prefix's owners when each holds
ceil((1 + eps) x mean) requests, and the replica it spills to computes the whole
prefix again. On a short burst that is the wrong trade: an owner frees a slot within
one request's service time, while the spill's prefill (seconds for 1k tokens on a
CPU engine) also slows every request batched with it there. So the router first
parks a spill until a request completes on one of those owners, then decides again
with the new loads: a slot under the bound makes it an owner hit; an owner still at
the bound, or no completion within ``routing.spill_wait_s``, makes it the spill it
was. The bound itself holds throughout: a parked request is on no replica.

This is delay scheduling (Zaharia et al., "Delay Scheduling", EuroSys 2010): a task
waits a short, bounded time for a slot where its data is before running where it is
not. Here the wait ends at the owner's next completion, so it follows the engines'
speed (milliseconds on GPUs, about a second on CPUs) and the timeout only bounds the
case of long generations. A sustained overload still spills: each completion wakes
one parked request, the oldest (as ``SlotWaiters`` hands a freed slot to one
waiter), and the others leave for the spill replica when their wait times out.

Runs on the router's event loop only; O(watched replicas) per wait, amortised O(1)
per wake.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection


class SpillWaiters:
    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    def waiting(self, replica_id: str) -> int:
        """Requests parked for a completion on this replica."""
        return sum(1 for f in self._queues.get(replica_id, ()) if not f.done())

    async def wait_any(self, replica_ids: Collection[str], *, timeout_s: float) -> bool:
        """Park until a request completes on one of ``replica_ids`` and this waiter is
        the oldest there (or the replica leaves); False on timeout or with nothing to
        wait for."""
        if not replica_ids or timeout_s <= 0:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for rid in replica_ids:
            self._queues.setdefault(rid, deque()).append(future)
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            # Done futures are skipped by the wakes, so a finished waiter cannot
            # swallow a wake meant for the next one; empty queues are dropped.
            if not future.done():
                future.cancel()
            for rid in replica_ids:
                queue = self._queues.get(rid)
                if queue is not None and all(f.done() for f in queue):
                    del self._queues[rid]

    def wake_one(self, replica_id: str) -> bool:
        """A request completed on this replica: wake its oldest live waiter."""
        queue = self._queues.get(replica_id)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                return True
        return False

    def wake_all(self, replica_id: str) -> int:
        """The replica left the ring: its waiters decide again at once."""
        woken = 0
        for future in self._queues.pop(replica_id, None) or ():
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken
