"""Per-replica FIFO queues of requests waiting for a slot on the replica they were routed to.

The cache-aware router offers a keyed request its chosen replica alone (the one
holding its prefix); when that replica is at Serve's ``max_ongoing_requests``, the
request must wait rather than fall through to a replica that would prefill the whole
prompt. Left to Serve, a waiting request polls: it probes the full replica's queue
length and sleeps on an exponential backoff capped at 0.5 s
(``RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S``). On a CPU engine a slot frees about every
second per replica, so up to half of that time the slot stays idle while its next
request sleeps, and whichever waiter wakes first wins it, not the oldest.

Here a waiter instead parks on a future of its replica's queue, and the router's
completion hook (``on_request_completed``) wakes exactly one waiter, the oldest, when
a request on that replica finishes. New arrivals queue behind existing waiters, so a
replica's waiters are served in arrival order. Waits are bounded (``timeout_s``): a
missed completion (a replica reporting a shorter queue, a cancelled request) costs at
most one timeout, after which Serve's own probing takes over again.

The spill wait (``routing.spill_wait_s``, serving/routing/cacheroute.py) uses a second
instance: a request the load bound would spill parks in the queues of all its
prefix's owners at once (``wait_any``), is woken by the first completion among them
that no slot waiter took, and then leaves every queue.

Cost: O(1) per wait on one replica, O(k) on k, and O(1) amortised per wake (a deque
per replica). Runs on the router's event loop only; not thread-safe by design, like
the rest of Serve's router state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection


class SlotWaiters:
    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    def waiting(self, replica_id: str) -> int:
        """Requests currently parked for this replica."""
        queue = self._queues.get(replica_id)
        return sum(1 for f in queue if not f.done()) if queue else 0

    async def wait(self, replica_id: str, *, timeout_s: float) -> bool:
        """Park until this replica frees a slot for us; False on timeout."""
        return await self.wait_any((replica_id,), timeout_s=timeout_s)

    async def wait_any(self, replica_ids: Collection[str], *, timeout_s: float) -> bool:
        """Park in each of these replicas' queues until a wake on one of them reaches
        us (or one leaves); False on timeout or with nothing to wait for. The spill
        wait parks on all the owners of a prefix at once (serving/routing/cacheroute.py)."""
        if not replica_ids or timeout_s <= 0:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queues = []
        for replica_id in replica_ids:
            queue = self._queues.setdefault(replica_id, deque())
            queue.append(future)
            queues.append((replica_id, queue))
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            # A timed-out or cancelled waiter leaves the queues, so it cannot swallow
            # the wake meant for the next one (done futures are skipped in wake()).
            if not future.done():
                future.cancel()
            for replica_id, queue in queues:
                if self._queues.get(replica_id) is queue and all(f.done() for f in queue):
                    del self._queues[replica_id]

    def wake_one(self, replica_id: str) -> bool:
        """A slot freed on this replica: wake its oldest live waiter."""
        queue = self._queues.get(replica_id)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                return True
        return False

    def wake_all(self, replica_id: str) -> int:
        """The replica left (died, drained): every waiter re-decides elsewhere."""
        queue = self._queues.pop(replica_id, None) or deque()
        woken = 0
        for future in queue:
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken
