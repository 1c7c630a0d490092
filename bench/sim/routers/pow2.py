"""``pow2``: Ray Serve's default ``PowerOfTwoChoicesRequestRouter``, simulated.

Per request: two distinct replicas drawn uniformly at random (for two replicas,
both in a random order), exactly as Serve draws them; the one with fewer
requests in flight below ``max_ongoing_requests`` wins, the first of equals.
When both are full, Serve retries with a fresh draw; the simulator holds the
request for the next replica that frees a slot, which is where retries end up
when every replica is full. Blind to caches: its hit rate is what chance and
repetition give. O(1) per decision.

Outcome labels: ``pow2``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bench.sim.prompts import SimRequest
from bench.sim.routers.base import NoHooks, Placement, least_busy
from router import InFlightCounts


def two_choices(replicas: Sequence[str], rng: random.Random) -> tuple[str, ...]:
    """Serve's draw (``pow_2_router.py``): two distinct replicas, ordered at random."""
    n = len(replicas)
    if n == 1:
        return (replicas[0],)
    if n == 2:
        return (replicas[0], replicas[1]) if rng.getrandbits(1) else (replicas[1], replicas[0])
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    return (replicas[i], replicas[j])


class Pow2Router(NoHooks):
    name = "pow2"

    def __init__(self, replicas: Sequence[str], *, rng: random.Random) -> None:
        self._replicas = tuple(replicas)
        self._rng = rng

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        return Placement(least_busy(two_choices(self._replicas, self._rng), in_flight,
                                    max_ongoing), "pow2")
