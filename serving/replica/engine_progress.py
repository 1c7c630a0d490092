"""Is this replica's engine making progress? The hang signal behind ring ejection.

A hung engine (a stopped or wedged engine process) answers nothing, while a busy
one steps all the time; time-to-first-token cannot tell them apart, since a queued
request waits on a busy engine too. So progress is measured on the engine itself:

    stalled_s = now - (the later of: the last engine step, the moment work arrived
                       after the engine had none), while work is pending; else 0

"Work pending" starts when a request enters the replica and ends at an engine step
with nothing left in flight, or when the last request in flight completes. A request
cancelled on a hung engine (the ingress gave up on it) leaves the stall standing, so the replica does not look
healthy merely because its requests went away; only a step clears it, which is
why `needs_probe` asks the replica to send the engine a one-token generation.

The replica ships `stalled_s` in Serve's routing stats (serving/replica/server.py); the router
ejects a replica whose value passed `failover.progress_timeout_s` and readmits it at 0
(serving/routing/hang_ejection.py). Steps are reported by the engine's stat logger
(serving/replica/engine_stats.py), once per engine step, in the replica process. O(1) per
event; the clock is injected for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from serving.contract import ENGINE_PROGRESS_KEY


class ProgressWatch:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        # Since when work has waited for a step (None: nothing pending).
        self._pending_since: float | None = None

    @property
    def active(self) -> int:
        return self._active

    def begin(self) -> None:
        """A request entered the replica."""
        with self._lock:
            self._active += 1
            if self._pending_since is None:
                self._pending_since = self._clock()

    def end(self, *, completed: bool) -> None:
        """A request left the replica. `completed`: its stream ran to its end, which
        proves the engine progressed; a cancelled or failed one proves nothing."""
        with self._lock:
            self._active = max(0, self._active - 1)
            if completed and not self._active:
                self._pending_since = None

    def on_step(self) -> None:
        """The engine completed a step."""
        with self._lock:
            self._pending_since = self._clock() if self._active else None

    def stalled_s(self) -> float:
        with self._lock:
            if self._pending_since is None:
                return 0.0
            return max(0.0, self._clock() - self._pending_since)

    def needs_probe(self) -> bool:
        """Stalled with no request left to make the engine step: only a probe can
        show that it works again."""
        with self._lock:
            return self._pending_since is not None and self._active == 0

    def report(self) -> dict[str, float]:
        # Rounded: routing stats are re-broadcast to every router when they change.
        return {"stalled_s": round(self.stalled_s(), 1), "active": self._active}


_PROCESS_WATCH = ProgressWatch()


def process_watch() -> ProgressWatch:
    """This process's watch: one engine per replica process, and vLLM builds the stat
    logger that reports steps itself, so it cannot be handed an object."""
    return _PROCESS_WATCH


def is_hung(report: object, progress_timeout_s: float) -> bool:
    """Whether a replica's routing-stats report says its engine is hung."""
    if not isinstance(report, dict):
        return False
    stalled = report.get("stalled_s")
    return isinstance(stalled, (int, float)) and stalled >= progress_timeout_s
