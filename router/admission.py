"""Admission: hold, wake, re-decide, commit. The one waiting protocol of the router.

A decision names a replica; whether the request may go there *now* is admission.
Two waits, both keyed by plain replica ids and a ``Ticket`` per waiting request:

* **Slot wait.** A request with a cache key is offered its chosen replica alone
  (``Decision.send_order``): a fall-through to a replica without its prefix is a full
  prefill. When that replica is at its most requests in flight (Serve's
  ``max_ongoing_requests``), the request is held in the replica's FIFO queue, woken by
  a completion there, and decided again with the loads of that moment (the load
  bound may now spill it, or its prefix may have a less loaded owner). A wait runs at
  most ``slot_wait_s``: past it the request is offered the full replica anyway, and
  the caller's own retry (Serve probes the replica and asks again) takes over.
* **Spill wait** (``spill_wait_s`` > 0; off at 0). A decision the load bound made a
  SPILL is taken with ``hold_spill`` (not recorded), and the request parks in the
  queues of every owner of its prefix among the candidates (``spill_owners``) at
  once, until the first completion among them that no slot waiter took, or
  ``spill_wait_s``. It then decides again and commits a spill; one spill wait per
  request. Delay scheduling (Zaharia et al., EuroSys 2010): on a short burst an
  owner frees a slot within one service time, while a spill's prefill also slows
  every request batched with it; the wait ends at the first completion, so it
  follows the engines' speed, and a parked request is on no replica, so the bound
  holds throughout. A request whose every owner already has a spill waiter spills
  at once (``busy``): the next completion there is the earlier request's, so this
  one would most likely wait for nothing. How a wait ended is a ``SpillWaitResult``
  (a metric label): ``owner_hit``, ``spill`` (woken, still at the bound),
  ``timeout``, ``busy``.

Wakes: one per completion (``on_completed``), the oldest slot waiter of that replica
first, else its oldest spill waiter (both deciding on one freed slot would overfill
it); a burst of freed slots from queue-length information (``on_free_slots``) wakes
slot waiters only, since a spill wait waits for a completion; a replica that leaves,
hangs or dies wakes everything parked on it (``on_replica_gone``), to decide among
the replicas left. A request that failed on some replicas (failover) names them in
``avoid``: it skips the spill wait (it already waited for a failure) and every
decision is moved past them (``Decision.failover``).

Each call answers with a ``Step``: ``Send`` (go now, with this decision) or ``Hold``
(wait on these replicas until this time, then ``resume``). Drivers:

* The Ray Serve adapter (serving/routing/parking.py) parks an asyncio future per
  ticket, bounded by ``Hold.until_s``, resolved by the tickets the completion hooks
  return; a cancelled request is ``cancel``led.
* The simulator (bench/sim/routers/cacheroute.py, bench/sim/loop.py) resumes the
  tickets a modelled completion returns at once, and at ``Hold.until_s`` those still
  parked, so ``cacheroute sim`` runs this module, not a copy.

Pure and synchronous: no asyncio, no threads, the clock injected. Not thread-safe,
like Serve's router state it lives beside: one event loop (or the simulator) calls it.

Cost: ``admit`` is one decision plus O(1) (O(k) to park on k owners); each wake is
O(1) amortised (a deque per replica and kind; a ticket parked on several queues
leaves a stale copy in the others, skipped once when it reaches their head); ``busy``
is O(k) from live counts per replica.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NewType

from router.decision import Decision, RouteRequest
from router.hashing import BlockHash
from router.interface import AdmissionPolicy
from router.outcome import Outcome
from router.ring import EmptyRingError

# One request while it waits: the key a driver parks and wakes it by.
Ticket = NewType("Ticket", int)

# Longest single slot wait. A completion wakes a waiter well before this; only a
# missed wake-up (a cancelled request, a queue length the replica corrected) or a
# long queue waits this long, and then the caller's retry asks again (live: Serve
# probes the replica; the simulator models the same).
SLOT_WAIT_S = 2.0


class WaitKind(str, Enum):
    # For a slot on the one replica the request was offered.
    SLOT = "slot"
    # For an owner of the prefix to free a slot before a spill.
    SPILL = "spill"

    def __str__(self) -> str:
        return self.value


class SpillWaitResult(str, Enum):
    """How a spill wait ended; a metric label (``cacheroute_router_spill_waits_total``)."""

    # An owner freed a slot: no spill.
    OWNER_HIT = "owner_hit"
    # An owner finished a request and was still at the bound: spilled.
    SPILL = "spill"
    TIMEOUT = "timeout"
    # Not waited: every owner already had a request waiting.
    BUSY = "busy"

    def __str__(self) -> str:
        # A metric label: "busy", not "SpillWaitResult.BUSY".
        return self.value


@dataclass(frozen=True, slots=True)
class Loads:
    """The fleet as a decision sees it now."""

    # Requests in flight per replica (missing ids count as 0).
    in_flight: Mapping[str, int]
    # Most requests a replica takes (Serve's ``max_ongoing_requests``): one cap for
    # all, a cap per replica (a missing one: no cap), or None: no cap at all.
    max_in_flight: int | Mapping[str, int] | None = None
    # The replicas the request may be sent to now; None: every replica on the ring.
    candidates: Collection[str] | None = None

    def is_full(self, replica_id: str) -> bool:
        cap = self.max_in_flight
        if cap is None:
            return False
        if not isinstance(cap, int):
            cap = cap.get(replica_id)
            if cap is None:
                return False
        return self.in_flight.get(replica_id, 0) >= cap


@dataclass(frozen=True)
class Send:
    """Go now, to ``decision.send_order``."""

    decision: Decision
    # How this request's spill wait ended, on the step where it ended.
    spill_wait: SpillWaitResult | None = None


_new = object.__new__


def _send(decision: Decision, spill_wait: SpillWaitResult | None) -> Send:
    # Every request ends in one: filling the frozen instance's __dict__ makes the same
    # object as Send(...) in half the time (as ``selection.Selection._decision`` does).
    send = _new(Send)
    fields = send.__dict__
    fields["decision"] = decision
    fields["spill_wait"] = spill_wait
    return send


@dataclass(frozen=True, slots=True)
class Hold:
    """Wait for a wake of ``ticket`` (a completion on one of ``replicas``), or until
    ``until_s`` on the admission's clock, then ``resume(ticket, ...)``."""

    ticket: Ticket
    kind: WaitKind
    replicas: frozenset[str]
    # math.inf: no time limit.
    until_s: float
    # How this request's spill wait ended, on the step where it ended.
    spill_wait: SpillWaitResult | None = None


Step = Send | Hold


class _Park:
    """One wait of one ticket, queued on each of its replicas. Only ``Admission``
    flips ``active``; a copy left in another replica's queue is stale once it is off."""

    __slots__ = ("active", "replicas", "ticket")

    def __init__(self, ticket: Ticket, replicas: tuple[str, ...]) -> None:
        self.ticket = ticket
        self.replicas = replicas
        self.active = True


class _Queues:
    """Per replica, a FIFO of parks of one kind and how many of them are active."""

    __slots__ = ("_counts", "_fifo")

    def __init__(self) -> None:
        self._fifo: dict[str, deque[_Park]] = {}
        self._counts: dict[str, int] = {}

    def count(self, replica_id: str) -> int:
        return self._counts.get(replica_id, 0)

    def add(self, park: _Park) -> None:
        for replica_id in park.replicas:
            self._fifo.setdefault(replica_id, deque()).append(park)
            self._counts[replica_id] = self._counts.get(replica_id, 0) + 1

    def oldest(self, replica_id: str) -> _Park | None:
        """The oldest active park of this replica (still active: the caller ends it)."""
        fifo = self._fifo.get(replica_id)
        while fifo:
            park = fifo.popleft()
            if park.active:
                if not fifo:
                    del self._fifo[replica_id]
                return park
        self._fifo.pop(replica_id, None)
        return None

    def remove(self, park: _Park) -> None:
        """A park that ended (``active`` already off): drop its counts, and the stale
        heads of its queues, so that a queue nobody pops does not grow."""
        for replica_id in park.replicas:
            left = self._counts.get(replica_id, 0) - 1
            if left > 0:
                self._counts[replica_id] = left
            else:
                self._counts.pop(replica_id, None)
            fifo = self._fifo.get(replica_id)
            while fifo and not fifo[0].active:
                fifo.popleft()
            if fifo is not None and not fifo:
                del self._fifo[replica_id]


class _Entry:
    """A held request: what it re-decides with, and its current or last wait."""

    __slots__ = ("avoid", "decision", "hashes", "kind", "park", "request", "ticket", "woken")

    def __init__(self, ticket: Ticket, request: RouteRequest, hashes: Sequence[BlockHash],
                 avoid: Collection[str]) -> None:
        self.ticket = ticket
        self.request = request
        self.hashes = hashes
        self.avoid = avoid
        self.decision: Decision | None = None
        self.kind = WaitKind.SLOT
        self.park: _Park | None = None
        self.woken = False


class Admission:
    """Holds requests for a slot or before a spill; see the module docstring."""

    def __init__(self, policy: AdmissionPolicy, *, spill_wait_s: float = 0.0,
                 slot_wait_s: float = SLOT_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 <= spill_wait_s < math.inf:
            raise ValueError(f"spill_wait_s must be finite and >= 0, got {spill_wait_s}")
        if not slot_wait_s > 0.0:
            raise ValueError(f"slot_wait_s must be > 0, got {slot_wait_s}")
        self._policy = policy
        self._spill_wait_s = spill_wait_s
        self._slot_wait_s = slot_wait_s
        self._clock = clock
        self._tickets = itertools.count(1)
        self._entries: dict[Ticket, _Entry] = {}
        self._slot = _Queues()
        self._spill = _Queues()
        self._decisions = 0

    @property
    def decisions(self) -> int:
        """Decisions made so far (first ones and re-decisions after a wait)."""
        return self._decisions

    def __len__(self) -> int:
        """Requests held now (parked, or woken and not yet resumed)."""
        return len(self._entries)

    def waiting(self, replica_id: str, kind: WaitKind) -> int:
        """Requests parked on this replica for this kind of wait."""
        return (self._slot if kind is WaitKind.SLOT else self._spill).count(replica_id)

    # --- decisions ------------------------------------------------------------------

    def admit(self, request: RouteRequest, loads: Loads, *,
              avoid: Collection[str] = frozenset(),
              hashes: Sequence[BlockHash] | None = None) -> Step:
        """Decide for a new request. ``avoid``: replicas that already failed it.
        ``hashes``: its block hashes, when the caller has them (else hashed here once,
        for every re-decision)."""
        if hashes is None:
            hashes = self._policy.block_hashes(request)
        hold_spill = self._spill_wait_s > 0 and not avoid
        # ``_select`` inlined: this is every request's path.
        self._decisions += 1
        decision = self._policy.select_hashed(request, hashes, loads.in_flight,
                                              hold_spill=hold_spill)
        if not (hold_spill or avoid or loads.is_full(decision.replica_id)):
            return _send(decision, None)  # the common case: sent at once
        spill_wait = None
        if hold_spill and decision.outcome is Outcome.SPILL:
            owners = self._policy.spill_owners(request, hashes)
            if loads.candidates is not None:
                owners = owners.intersection(loads.candidates)
            if owners:
                spill = self._spill
                if not all(spill.count(owner) for owner in owners):
                    entry = self._new_entry(request, hashes, avoid)
                    return self._park(entry, WaitKind.SPILL, owners, self._spill_wait_s,
                                      decision, None)
                spill_wait = SpillWaitResult.BUSY
            self._policy.commit(request, decision, hashes)
        return self._offer(None, request, hashes, avoid, decision, loads, spill_wait)

    def resume(self, ticket: Ticket, loads: Loads) -> Step:
        """Continue a held request, woken or not (still parked: its wait ran out)."""
        entry = self._entries[ticket]
        woken = entry.park is None and entry.woken
        if entry.park is not None:
            self._unpark(entry)
        request, hashes = entry.request, entry.hashes
        if entry.kind is WaitKind.SPILL:
            decision = self._select(request, hashes, loads, True)
            result = (SpillWaitResult.OWNER_HIT if decision.outcome is Outcome.OWNER_HIT
                      else SpillWaitResult.SPILL if woken else SpillWaitResult.TIMEOUT)
            if decision.outcome is Outcome.SPILL:
                self._policy.commit(request, decision, hashes)
            return self._offer(entry, request, hashes, entry.avoid, decision, loads, result)
        if not woken:
            # The slot wait ran out: offer the replica anyway; the caller's retry
            # (Serve's probe of its queue) decides what happens next.
            del self._entries[ticket]
            assert entry.decision is not None
            return _send(entry.decision, None)
        decision = self._select(request, hashes, loads, False)
        return self._offer(entry, request, hashes, entry.avoid, decision, loads, None)

    def cancel(self, ticket: Ticket) -> None:
        """The request went away while held (its caller gave up): forget it."""
        entry = self._entries.pop(ticket, None)
        if entry is not None and entry.park is not None:
            self._unpark(entry)

    # --- wakes ----------------------------------------------------------------------

    def on_completed(self, replica_id: str) -> Ticket | None:
        """A request finished on this replica: wake its oldest slot waiter, else its
        oldest spill waiter; returns the woken ticket (None: nobody waited)."""
        park = self._slot.oldest(replica_id) or self._spill.oldest(replica_id)
        return self._wake(park) if park is not None else None

    def on_free_slots(self, replica_id: str, free: int) -> list[Ticket]:
        """The replica reported ``free`` slots (queue-length information): wake up to
        that many of its slot waiters, oldest first."""
        woken: list[Ticket] = []
        while len(woken) < free:
            park = self._slot.oldest(replica_id)
            if park is None:
                break
            woken.append(self._wake(park))
        return woken

    def on_replica_gone(self, replica_id: str) -> list[Ticket]:
        """The replica left the ring (removed, dead or hung): wake every request
        parked on it, slot waiters first, each to decide among the replicas left."""
        woken: list[Ticket] = []
        for queues in (self._slot, self._spill):
            while (park := queues.oldest(replica_id)) is not None:
                woken.append(self._wake(park))
        return woken

    # --- internals ------------------------------------------------------------------

    def _select(self, request: RouteRequest, hashes: Sequence[BlockHash], loads: Loads,
                hold_spill: bool) -> Decision:
        self._decisions += 1
        return self._policy.select_hashed(request, hashes, loads.in_flight,
                                          hold_spill=hold_spill)

    def _offer(self, entry: _Entry | None, request: RouteRequest, hashes: Sequence[BlockHash],
               avoid: Collection[str], decision: Decision, loads: Loads,
               spill_wait: SpillWaitResult | None) -> Step:
        """The decision past the replicas to avoid; held for a slot if it names one
        replica alone and that one is full; else sent."""
        if avoid and decision.replica_id in avoid:
            try:
                decision = decision.failover(avoid)
            except EmptyRingError:  # every replica failed it: the usual choice
                pass
        chosen = decision.replica_id
        # Fullness first: it is the rare case, and the cheaper test.
        if (loads.is_full(chosen) and len(decision.send_order) == 1
                and (loads.candidates is None or chosen in loads.candidates)):
            if entry is None:
                entry = self._new_entry(request, hashes, avoid)
            return self._park(entry, WaitKind.SLOT, (chosen,), self._slot_wait_s,
                              decision, spill_wait)
        if entry is not None:
            del self._entries[entry.ticket]
        return _send(decision, spill_wait)

    def _new_entry(self, request: RouteRequest, hashes: Sequence[BlockHash],
                   avoid: Collection[str]) -> _Entry:
        entry = _Entry(Ticket(next(self._tickets)), request, hashes, avoid)
        self._entries[entry.ticket] = entry
        return entry

    def _park(self, entry: _Entry, kind: WaitKind, replicas: Collection[str], wait_s: float,
              decision: Decision, spill_wait: SpillWaitResult | None) -> Hold:
        park = _Park(entry.ticket, tuple(replicas))
        entry.park, entry.kind, entry.decision, entry.woken = park, kind, decision, False
        (self._slot if kind is WaitKind.SLOT else self._spill).add(park)
        return Hold(entry.ticket, kind, frozenset(park.replicas), self._clock() + wait_s,
                    spill_wait)

    def _wake(self, park: _Park) -> Ticket:
        entry = self._entries[park.ticket]
        self._unpark(entry)
        entry.woken = True
        return park.ticket

    def _unpark(self, entry: _Entry) -> None:
        park = entry.park
        assert park is not None
        park.active = False
        entry.park = None
        (self._slot if entry.kind is WaitKind.SLOT else self._spill).remove(park)
