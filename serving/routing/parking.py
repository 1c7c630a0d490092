"""Parks the requests the routing core holds, on Serve's router event loop.

The core's waiting protocol (router/admission.py) answers a decision with a step:
send now, or hold the request's ticket until a completion wakes it or a time passes.
This driver turns each hold into an asyncio future keyed by the ticket, awaited at
most until the hold's deadline, and resolved when a router hook hands back the
ticket the core woke (``on_completed``, ``on_free_slots``, ``on_replica_gone``); the
core then decides again with the loads of that moment. A request whose task is
cancelled while parked leaves the core's queues.

Why park here rather than let Serve poll: left to Serve, a request waiting for a full
replica probes its queue length on a backoff capped at 0.5 s
(``RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S``). On a CPU engine a slot frees about every
second per replica, so up to half of that time the slot stays idle while its next
request sleeps, and whichever waiter wakes first wins it, not the oldest.

Cost: one future per hold and O(1) per wake on top of the core's. Runs on the
router's event loop only, like the rest of Serve's router state; not thread-safe.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

from router import Admission, Hold, Loads, Send, SpillWaitResult, Step, Ticket


class Parking:
    def __init__(self, admission: Admission, *,
                 on_spill_wait: Callable[[SpillWaitResult], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._admission = admission
        self._on_spill_wait = on_spill_wait
        self._clock = clock
        self._futures: dict[Ticket, asyncio.Future[None]] = {}

    def parked(self) -> int:
        """Requests awaiting a wake now."""
        return len(self._futures)

    async def until_sent(self, step: Step, loads: Callable[[], Loads | None]) -> Send | None:
        """Follow ``step`` to a ``Send``: park on each hold, then resume the ticket with
        ``loads()``. None when ``loads()`` finds no candidate left after a wait."""
        while True:
            if step.spill_wait is not None:
                self._on_spill_wait(step.spill_wait)
            if isinstance(step, Send):
                return step
            await self._park(step)
            now = loads()
            if now is None:
                self._admission.cancel(step.ticket)
                return None
            step = self._admission.resume(step.ticket, now)

    async def _park(self, hold: Hold) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[hold.ticket] = future
        left_s = hold.until_s - self._clock()
        try:
            # A timeout is no error: the core, which knows the ticket was not woken,
            # decides what a wait that ran out means.
            await asyncio.wait_for(future, None if left_s == math.inf else max(0.0, left_s))
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            self._admission.cancel(hold.ticket)
            raise
        finally:
            del self._futures[hold.ticket]

    def _wake(self, tickets: Iterable[Ticket | None]) -> None:
        for ticket in tickets:
            future = self._futures.get(ticket) if ticket is not None else None
            if future is not None and not future.done():
                future.set_result(None)

    # --- wakes, from the router's hooks ---------------------------------------------

    def on_completed(self, replica_id: str) -> None:
        """A request finished there: one waiter (a slot waiter first) decides again."""
        self._wake((self._admission.on_completed(replica_id),))

    def on_free_slots(self, replica_id: str, free: int) -> None:
        """The replica reported ``free`` slots: that many slot waiters decide again."""
        if free > 0:
            self._wake(self._admission.on_free_slots(replica_id, free))

    def on_replica_gone(self, replica_id: str) -> None:
        """The replica left the ring: everything parked on it decides again."""
        self._wake(self._admission.on_replica_gone(replica_id))
