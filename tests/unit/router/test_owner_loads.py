"""OwnerLoads (hot blocks' owners by load) answers as the plain scan does, and
OwnershipIndex's O(1) TTL floor answers as a per-pair expiry check does."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import FakeClock, make_hashes, make_index

from router.hashing import BlockHash
from router.load import InFlightCounts
from router.owner_loads import OwnerLoads, OwnerOrder
from router.ring import HashRing

REPLICAS = [f"r{i}" for i in range(40)]


# Owners r10 and r11 are off the ring (ejected, say): never a first choice.
RING = HashRing(REPLICAS[:10])


def _scan(owners: dict[str, float], in_flight: InFlightCounts, ring: HashRing,
          key: int) -> tuple[int, str | None]:
    """The plain answer: the lowest load, and the first owner at it along the walk."""
    lowest = min(in_flight.get(r, 0) for r in owners)
    tied = {r for r in owners if in_flight.get(r, 0) == lowest}
    return lowest, next((r for r in ring.walk(key) if r in tied), None)


# Mostly load changes between lookups (the catch-up path), sometimes an owner added
# (appended to the owner map), removed or expired (a rebuild).
_OPERATIONS = (["learn"] * 4 + ["start"] * 10 + ["finish"] * 10
               + ["forget", "clear", "advance", "ring"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_cached_views_equal_the_plain_scan(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    index = make_index(ttl_s=60.0, clock=clock)
    in_flight = InFlightCounts(frozenset(REPLICAS))
    # A short change log, so falling behind it (a rebuild) happens too.
    in_flight.changes = type(in_flight.changes)(maxlen=64)
    loads = OwnerLoads(max_blocks=3, min_owners=2)
    blocks = make_hashes(*range(4))
    ring = HashRing(REPLICAS[:10])  # a replica leaves and rejoins it now and then
    cached = 0
    for _ in range(600):
        op, block, replica = rng.choice(_OPERATIONS), rng.randrange(4), rng.choice(REPLICAS[:12])
        if op == "learn":
            index.learn(replica, blocks[: block + 1])
        elif op == "forget":
            index.forget(replica, blocks[block:])
        elif op == "finish":
            if in_flight[replica]:
                in_flight.add(replica, -1)
        elif op == "start":
            in_flight.add(replica, 1)
        elif op == "clear":
            index.clear(replica)
        elif op == "ring":
            if replica not in ring:
                ring.add(replica)
            elif len(ring) > 1:
                ring.remove(replica)
        else:
            clock.advance(7)
        matched, owners = index.owners_of_longest_prefix(blocks[: rng.randrange(4) + 1])
        if not matched:
            continue
        key = rng.choice([1, 2, 2**63])  # a chain's ring key, or a session's
        got = loads.least_loaded(blocks[matched - 1], owners, in_flight, ring, key)
        if len(owners) < 2:
            assert got is None
        elif got is not None:  # None: not hot enough, the caller scans
            cached += 1
            assert got == _scan(dict(owners), in_flight, ring, key)
    assert cached > 100  # the comparison ran, on the cached path


def test_not_cached_for_few_owners_or_plain_counts() -> None:
    index = make_index()
    block = make_hashes(1)
    for replica in REPLICAS[:3]:
        index.learn(replica, block)
    _, owners = index.owners_of_longest_prefix(block)
    loads = OwnerLoads(min_owners=4)
    assert loads.least_loaded(
        block[0], owners, InFlightCounts(frozenset(REPLICAS)), RING, 1) is None
    assert OwnerLoads(min_owners=2).least_loaded(block[0], owners, {"r0": 1}, RING, 1) is None
    assert len(loads) == 0


def test_a_view_is_kept_for_blocks_used_often_and_bounded() -> None:
    index = make_index()
    in_flight = InFlightCounts(frozenset(REPLICAS))
    loads = OwnerLoads(max_blocks=2, min_owners=1)
    for value in range(5):
        block = make_hashes(value)
        index.learn("r1", block)
        _, owners = index.owners_of_longest_prefix(block)
        assert loads.least_loaded(block[0], owners, in_flight, RING, 1) is None  # no history
        assert loads.least_loaded(block[0], owners, in_flight, RING, 1) == (0, "r1")
    assert len(loads) == 2
    # A block whose uses are further apart than 2 changes per owner gets no view.
    index.learn("r2", make_hashes(9))
    _, owners = index.owners_of_longest_prefix(make_hashes(9))
    assert loads.least_loaded(make_hashes(9)[0], owners, in_flight, RING, 1) is None
    for _ in range(5):
        in_flight.add("r3", 1)
    assert loads.least_loaded(make_hashes(9)[0], owners, in_flight, RING, 1) is None
    with pytest.raises(ValueError):
        OwnerLoads(max_blocks=0)


def test_in_flight_counts_log_their_changes() -> None:
    in_flight = InFlightCounts(frozenset(["a", "b"]))
    in_flight.add("a", 2)
    in_flight.add("b", 1)
    in_flight.add("a", -1)
    assert in_flight.changed == 3 and list(in_flight.changes) == ["a", "b", "a"]


class _ReferenceIndex:
    """Pairs with expiries, no floor, no LRU bound: what the index must answer."""

    def __init__(self, clock: FakeClock, ttl_s: float) -> None:
        self.clock, self.ttl_s = clock, ttl_s
        self.pairs: dict[BlockHash, dict[str, float]] = {}

    def learn(self, replica: str, hashes: list[BlockHash]) -> None:
        for block in hashes:
            self.pairs.setdefault(block, {})[replica] = self.clock() + self.ttl_s

    def owners(self, block: BlockHash) -> frozenset[str]:
        now = self.clock()
        return frozenset(r for r, t in self.pairs.get(block, {}).items() if t > now)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_ttl_floor_answers_as_per_pair_expiry(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    # Every learn refreshes every block (no refresh interval): exact expiries.
    index = make_index(max_entries=10_000, ttl_s=10.0, refresh_s=0.0, clock=clock)
    reference = _ReferenceIndex(clock, 10.0)
    chains = [make_hashes(*range(c * 10, c * 10 + 4)) for c in range(3)]
    for _ in range(200):
        chain = rng.choice(chains)
        if rng.random() < 0.5:
            replica = rng.choice(REPLICAS[:6])
            length = rng.randint(1, 4)
            index.learn(replica, chain[:length])
            reference.learn(replica, chain[:length])
        else:
            clock.advance(rng.choice([0.5, 1.0, 3.0]))
        block = rng.choice(chain)
        assert index.owners(block) == reference.owners(block)
        matched, owners = index.owners_of_longest_prefix(chain)
        expected = max((m for m in range(1, 5) if reference.owners(chain[m - 1])), default=0)
        assert matched == expected
        if matched:
            assert set(owners) == reference.owners(chain[matched - 1])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_ring_ordered_owners_answer_as_the_plain_scan(seed: int) -> None:
    # With every count present (an InFlightCounts) and with some missing (a plain
    # dict: a missing owner counts as 0), as owners join and leave.
    rng = random.Random(seed)
    clock = FakeClock()
    index = make_index(ttl_s=60.0, clock=clock)
    order = OwnerOrder(max_blocks=2)
    counted = InFlightCounts(frozenset(REPLICAS))
    blocks = make_hashes(*range(3))
    for _ in range(300):
        block, replica = rng.randrange(3), rng.choice(REPLICAS[:10])
        if rng.random() < 0.3:
            index.learn(replica, blocks[: block + 1])
        elif rng.random() < 0.1:
            index.forget(replica, blocks[block:])
        else:
            counted.add(replica, 1 if rng.random() < 0.6 or not counted[replica] else -1)
        partial = {r: c for r, c in counted.items() if rng.random() < 0.7}
        key = rng.choice([1, 2**40, 2**63])
        matched, owners = index.owners_of_longest_prefix(blocks)
        if not matched:
            continue
        for in_flight in (counted, partial):
            answer = order.least_loaded(blocks[matched - 1], owners, in_flight, RING, key)
            assert answer == _scan(owners, in_flight, RING, key)  # type: ignore[arg-type]
