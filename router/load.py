"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018).

Algorithm: with ``n`` replicas and ``total`` requests in flight, no replica may take
a new request once it holds ``capacity = ceil((1 + epsilon) * (total + 1) / n)``.
A request goes to the first replica along the ring, starting at its key's home,
whose in-flight count is below that capacity. Because the average load
``total / n`` is below ``capacity``, some replica always has room, so the walk
always ends. Overflow of one hot key lands on the replicas that follow its home
on the ring (not on random ones), so its prefix is cached on few replicas.

Cost: O(1) for the capacity; the walk visits replicas in ring order until one has
room, typically one or two (``ring.walk`` cost per step).

``epsilon`` trades cache locality for balance: 0 forces near-perfect balance
(many spills), large values let a hot home run far above the mean (few spills,
long queues). Unlike power-of-two-choices, the choice is deterministic.

At a few requests per replica the ceiling is 1 or 2, so one request more than the
mean spills a prefix from its owner, although its engine batches several requests
together. ``floor`` (``PolicyConfig.load_floor``) raises the capacity to at least that
many requests: the bound starts to count above it, as SGLang's router leaves a
fleet alone while its load spread is under ``balance_abs_threshold``. A larger
capacity keeps the walk's guarantee (some replica is below it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadChoice:
    """Where the bounded-load walk stopped, and why."""

    replica_id: str
    # True when the preferred (first) replica was at capacity.
    spilled: bool
    # The per-replica ceiling the choice was made under.
    capacity: int


def load_capacity(total_in_flight: int, num_replicas: int, epsilon: float,
                  floor: int = 0) -> int:
    """``max(floor, ceil((1 + epsilon) * (total_in_flight + 1) / num_replicas))``.

    The ``+ 1`` counts the request being placed, so capacity is at least 1.
    """
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if total_in_flight < 0:
        raise ValueError(f"total_in_flight must be >= 0, got {total_in_flight}")
    return max(floor, math.ceil((1.0 + epsilon) * (total_in_flight + 1) / num_replicas))


class InFlightCounts(dict[str, int]):
    """Requests in flight per replica, with their sum kept as counts change.

    A plain ``dict`` for readers (``get`` stays the C method the policy calls several
    times per decision), changed only through ``add`` so that ``total`` cannot drift:
    the other mutators raise. ``total_in_flight`` reads ``total`` in O(1) when the
    table was built over the replica set it is asked about (``covers``), instead of
    summing N counts, which at 1,000 replicas would cost more than the rest of a
    decision. That is the very ``replicas`` object (e.g.
    ``InFlightCounts(policy.replicas)``), or a frozenset equal to the frozenset it
    was built over: several policies deciding for one fleet (one per ingress) each
    hold their own equal copy, compared once per copy.

    ``changes`` holds the ids of the last ``CHANGE_LOG_LENGTH`` changes and
    ``changed`` counts all changes ever made, so a reader that remembers ``changed``
    learns which counts moved since (``owner_loads.py``: a hot prefix's least loaded
    owner is kept up to date from the few owners whose counts moved, instead of
    reading all of them per decision). Like the policy, not thread-safe: a
    caller that changes counts from several threads passes a plain ``dict``
    snapshot instead, as the Ray adapter does.
    """

    __slots__ = ("_compared", "changed", "changes", "replicas", "total")

    # Changes remembered: a reader further behind reads every count again.
    CHANGE_LOG_LENGTH = 4096
    # Other replica-set objects remembered by ``covers`` before it starts over.
    COMPARED_SETS = 64

    def __init__(self, replicas: Collection[str]) -> None:
        super().__init__(dict.fromkeys(replicas, 0))
        self.replicas = replicas
        self.total = 0
        self.changes: deque[str] = deque(maxlen=self.CHANGE_LOG_LENGTH)
        self.changed = 0
        # id -> (the set, whether it equals ``replicas``). Holding the set keeps its
        # id from being reused, and frozensets cannot change, so the answer stays true.
        self._compared: dict[int, tuple[Collection[str], bool]] = {}

    def covers(self, replicas: Collection[str]) -> bool:
        """True when ``total`` is the sum over ``replicas``: the set this table was
        built over, or a frozenset equal to that frozenset (an O(N) comparison the
        first time a set object is asked about, O(1) after)."""
        if replicas is self.replicas:
            return True
        known = self._compared.get(id(replicas))
        if known is not None and known[0] is replicas:
            return known[1]
        if not (isinstance(replicas, frozenset) and isinstance(self.replicas, frozenset)):
            return False  # a mutable set may change after any comparison
        if len(self._compared) >= self.COMPARED_SETS:
            self._compared.clear()  # sets of replaced memberships, no longer asked about
        equal = replicas == self.replicas
        self._compared[id(replicas)] = (replicas, equal)
        return equal

    def add(self, replica: str, delta: int) -> int:
        """Change ``replica``'s count by ``delta``; returns the new count."""
        count = dict.get(self, replica, 0) + delta
        if count < 0:
            raise ValueError(f"in-flight count of {replica!r} would be negative: {count}")
        dict.__setitem__(self, replica, count)
        if replica in self.replicas:
            self.total += delta
        self.changes.append(replica)
        self.changed += 1
        return count

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("InFlightCounts changes only through add()")

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore[assignment]


def total_in_flight(in_flight: Mapping[str, int], replicas: Collection[str]) -> int:
    """Sum of in-flight counts over ``replicas``; ids outside the set are ignored."""
    if isinstance(in_flight, InFlightCounts) and in_flight.covers(replicas):
        return in_flight.total
    total = 0
    for replica in replicas:
        count = in_flight.get(replica, 0)
        if count < 0:
            raise ValueError(f"in-flight count of {replica!r} is negative: {count}")
        total += count
    return total


def choose_bounded(
    order: Iterable[str], in_flight: Mapping[str, int], capacity: int
) -> LoadChoice | None:
    """The first replica of ``order`` with fewer than ``capacity`` requests in flight.

    ``order`` is usually ``ring.walk(key)``; returns None only if ``order`` is
    exhausted, which cannot happen for a full ring walk with a capacity from
    ``load_capacity`` (pigeonhole, see module docstring).
    """
    for position, replica in enumerate(order):
        if in_flight.get(replica, 0) < capacity:
            return LoadChoice(replica_id=replica, spilled=position > 0, capacity=capacity)
    return None
