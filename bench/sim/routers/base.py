"""What a simulated router is: one ``route`` call per request, plus hooks.

Each router models one live policy *including* the part of Ray Serve that acts on
its answer, because that part changes where requests land under load: Serve sends
a request only to a replica with fewer than ``max_ongoing_requests`` in flight,
trying the router's candidate tiers in order and, within a tier, the replica with
the fewest in flight (the first of equals); when no candidate has room it backs
off and asks again. The simulator replaces that back-off with a hold queue
(``loop.py``, ``hold_queue.py``): a held request goes to the first replica that
frees a slot among its ``Placement.candidates``.

A router that waits itself, as ``cacheroute`` does live (router/admission.py),
answers with ``Placement.hold`` instead and implements ``WaitingRouter``: the loop
reports every completion to the router that sent the request (``on_completed``)
and ``resume``s what it wakes, or what reached its deadline.

Routers see in-flight counts as Serve's queue-length cache would hold them: the
requests sent to a replica and not yet finished, exact and never stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bench.sim.block_cache import Allocation
from bench.sim.prompts import SimRequest
from router import Hold, InFlightCounts


@dataclass(frozen=True, slots=True)
class Placement:
    """A routing answer: where the request goes now, or whom it waits for."""

    # None: every candidate is at max_ongoing_requests; the request is held.
    replica: str | None
    # Why, as a bounded label (cacheroute's Outcome values; see each router).
    outcome: str
    # While held by Serve, the replicas that may take it; None means any.
    candidates: frozenset[str] | None = None
    # Held by the router itself (a ``WaitingRouter``) until a completion on one of
    # ``hold.replicas`` wakes it or ``hold.until_s`` passes; then ``resume``.
    hold: Hold | None = None


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


class WaitingRouter(SimRouter, Protocol):
    """A router that holds requests itself (``Placement.hold``)."""

    @property
    def decisions(self) -> int:
        """Decisions made, first ones and again after a wait."""
        ...

    def resume(self, request: SimRequest, in_flight: InFlightCounts,
               max_ongoing: int | None) -> Placement:
        """Decide again for a held request, woken or at its deadline (timed)."""
        ...

    def on_completed(self, request: SimRequest, replica: str) -> list[SimRequest]:
        """``request``, which this router placed, finished on ``replica``; returns the
        held requests that wake (to ``resume``)."""
        ...

    def on_free_slots(self, replica: str, free: int) -> list[SimRequest]:
        """``replica`` has ``free`` slots (Serve's queue-length information); returns
        the held requests that wake."""
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
