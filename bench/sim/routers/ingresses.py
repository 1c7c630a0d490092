"""Several ingress instances, each with its own router, behind one proxy.

In Ray Serve every ingress replica holds its own ``DeploymentHandle`` and so its
own request router: with K ingresses, K routers decide for one fleet of
engines, and Serve's proxy spreads the requests over them. ``Ingresses`` models
that: per request one of its routers is drawn uniformly (seeded), and that
router alone decides. What the instances share is what they share live:

* ``cacheroute``: nothing but the engines' KV events, which every instance
  subscribes to (``on_kv_events`` is broadcast). Each instance learns its own
  decisions at once and the others' only when the engine stores the blocks; the
  ring agrees on a new prefix's home with no shared state at all.
* ``pow2`` and ``random``: nothing; they read loads only.
* ``ray-prefix`` is *not* wrapped: Ray's routers share one named
  ``PrefixTreeActor`` per deployment (``prefix_aware_router.py``, ``get_if_exists``),
  so K of them make the decisions one router would, each paying an actor call.
  ``ray-prefix-local`` is the same router with a tree per ingress, as a prefix
  router without a shared store has.

Loads are the same exact in-flight counts for every instance (``base.py``): live,
each router adds its own sends to Serve's shared queue-length cache, so this
leaves out only that cache's staleness, for every policy alike.

A decision's follow-ups (``on_placed``, and ``resume`` of a request the router
held) go to the instance that made it, tracked per request until it is placed; a
completion goes to the instance that placed the request (``on_completed``), as
Serve calls the completion hook of the router that sent it, so it wakes only that
instance's waiters (router/admission.py).

``decisions_per_s`` with K > 1 counts the same work per decision as with one: every
instance's replica set is an equal copy of the one the loop's in-flight counts
were built over, which ``InFlightCounts.covers`` recognises (``router/load.py``),
so each reads the total in O(1). What still lowers the rate as K grows is that
each instance decides 1/K of the requests: its views of hot prefixes' loads
(``router/owner_loads.py``) catch up over K times as many changes, and its data
is colder in the CPU caches. Live, each instance runs in its own process.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from bench.sim.block_cache import Allocation
from bench.sim.prompts import SimRequest
from bench.sim.routers.base import Placement, SimRouter
from router import InFlightCounts


class Ingresses:
    """``len(routers)`` router instances of one policy, one drawn per request."""

    def __init__(self, routers: Sequence[SimRouter], *, rng: random.Random) -> None:
        if len(routers) < 2:
            raise ValueError("Ingresses needs at least two routers; use the router itself")
        self.routers = tuple(routers)
        self.name = routers[0].name
        self._rng = rng
        # request index -> the instance that decided it, until the request is placed.
        self._decided_by: dict[int, SimRouter] = {}
        # Routers that hold requests themselves hear of completions: request index ->
        # the instance that placed it, until it completes.
        self._waits = hasattr(routers[0], "on_completed")
        self._placed_by: dict[int, SimRouter] = {}
        self._routed = 0

    @property
    def replicas(self) -> frozenset[str] | None:
        return getattr(self.routers[0], "replicas", None)

    @property
    def decisions(self) -> int:
        if self._waits:
            return sum(router.decisions for router in self.routers)  # type: ignore[attr-defined]
        return self._routed

    @property
    def outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for router in self.routers:
            total.update(getattr(router, "outcomes", {}))
        return total

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        router = self.routers[self._rng.randrange(len(self.routers))]
        self._decided_by[request.index] = router
        self._routed += 1
        return router.route(request, in_flight, max_ongoing)

    def resume(self, request: SimRequest, in_flight: InFlightCounts,
               max_ongoing: int | None) -> Placement:
        router = self._decided_by[request.index]
        return router.resume(request, in_flight, max_ongoing)  # type: ignore[attr-defined]

    def on_placed(self, request: SimRequest, replica: str, now_s: float) -> None:
        router = self._decided_by.pop(request.index)
        if self._waits:
            self._placed_by[request.index] = router
        router.on_placed(request, replica, now_s)

    def on_completed(self, request: SimRequest, replica: str) -> list[SimRequest]:
        if not self._waits:
            return []
        router = self._placed_by.pop(request.index)
        return router.on_completed(request, replica)  # type: ignore[attr-defined]

    def on_free_slots(self, replica: str, free: int) -> list[SimRequest]:
        """Every instance learns the replica's queue length (each probes it live)."""
        if not self._waits:
            return []
        return [woken for router in self.routers
                for woken in router.on_free_slots(replica, free)]  # type: ignore[attr-defined]

    def on_kv_events(self, replica: str, allocation: Allocation, now_s: float) -> None:
        for router in self.routers:
            router.on_kv_events(replica, allocation, now_s)
