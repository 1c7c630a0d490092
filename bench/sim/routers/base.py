"""What a simulated router is: one ``route`` call per request, plus two hooks.

Each router models one live policy *including* the part of Ray Serve that acts on
its answer, because that part changes where requests land under load: Serve sends
a request only to a replica with fewer than ``max_ongoing_requests`` in flight,
trying the router's candidate tiers in order and, within a tier, the replica with
the fewest in flight (the first of equals); when no candidate has room it backs
off and asks again. The simulator replaces the back-off with a hold queue
(``loop.py``): a held request goes to the first replica that frees a slot among
its ``Placement.candidates``.

Routers see in-flight counts as Serve's queue-length cache would hold them: the
requests sent to a replica and not yet finished, exact and never stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bench.sim.block_cache import Allocation
from bench.sim.prompts import SimRequest
from router.load import InFlightCounts


@dataclass(frozen=True, slots=True)
class Placement:
    """A routing answer: where the request goes now, or whom it waits for."""

    # None: every candidate is at max_ongoing_requests; the request is held.
    replica: str | None
    # Why, as a bounded label (cacheroute's Outcome values; see each router).
    outcome: str
    # While held, the replicas that may take it; None means any.
    candidates: frozenset[str] | None = None
    # The spill wait: park until a request completes on one of these (or the wait
    # times out), then ``decide_again``; None: no wait.
    wait_for: frozenset[str] | None = None


class SimRouter(Protocol):
    name: str

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        """Decide for one request (the timed call)."""
        ...

    def on_placed(self, request: SimRequest, replica: str, now_s: float) -> None:
        """The request was sent to ``replica`` (now, or later after a hold)."""
        ...

    def on_kv_events(self, replica: str, allocation: Allocation, now_s: float) -> None:
        """``replica``'s engine cached and evicted blocks (its KV events)."""
        ...


class NoHooks:
    """Default no-op hooks for routers that need neither."""

    def on_placed(self, request: SimRequest, replica: str, now_s: float) -> None:
        return None

    def on_kv_events(self, replica: str, allocation: Allocation, now_s: float) -> None:
        return None


def least_busy(candidates: Iterable[str], in_flight: Mapping[str, int],
               max_ongoing: int | None) -> str | None:
    """Serve's pick within a tier: fewest in flight below ``max_ongoing``, first of
    equals; None when all are full."""
    best = None
    lowest = max_ongoing if max_ongoing is not None else None
    get = in_flight.get
    for replica in candidates:
        load = get(replica, 0)
        if lowest is None or load < lowest:
            best, lowest = replica, load
    return best
