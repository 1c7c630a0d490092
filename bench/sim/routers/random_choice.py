"""``random``: a uniformly random replica, the floor any policy must beat.

Neither load- nor cache-aware, O(1) per decision. A pick at ``max_ongoing_requests``
is held for the next replica with room (like Serve's retries, which end wherever a
slot frees first). Outcome labels: ``random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bench.sim.prompts import SimRequest
from bench.sim.routers.base import NoHooks, Placement
from router import InFlightCounts


class RandomRouter(NoHooks):
    name = "random"

    def __init__(self, replicas: Sequence[str], *, rng: random.Random) -> None:
        self._replicas = tuple(replicas)
        self._rng = rng

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        replica = self._rng.choice(self._replicas)
        if max_ongoing is None or in_flight.get(replica, 0) < max_ongoing:
            return Placement(replica, "random")
        return Placement(None, "random")
