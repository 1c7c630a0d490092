"""Reads of unrelated memory between two timed calls: the CPU cache pressure a
router meets when other work runs between its decisions.

A decision reads a few hundred objects (index entries, owner maps, in-flight
counts, ring lists). Timed back to back, they stay in the core's private caches;
in a server or in the simulator, the work between two decisions (parsing,
tokenising, the engine model) pushes them out, and each read becomes a miss.
``unrelated_reads(K)`` stands for that work in the core-alone loops
(``bench.decision_rate``, ``bench.decision_rate_ab``): K objects of a pool far
larger than those caches, read in turn, so that each has left them by its next
read. The simulator's own rate at 1,000 replicas matches K of about 2,000
(docs/benchmarks/notes/2026-12-07-measurements-to-date.md).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import cycle, islice

# 2^18 one-entry dicts, about 70 MB: far more than a core's L1 and L2 caches hold.
POOL_OBJECTS = 1 << 18


def _item(number: int) -> dict[int, int]:
    return {number: number}


def unrelated_reads(count: int) -> Callable[[], None]:
    """A call that reads the next ``count`` objects of the pool, wrapping around;
    a call that does nothing for 0."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return lambda: None
    pool = cycle([_item(number) for number in range(POOL_OBJECTS)])

    def read() -> None:
        for item in islice(pool, count):
            item.get(0)

    return read
