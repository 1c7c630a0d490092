"""OwnershipIndex: prefix lookup, events, LRU bound and TTL on a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from router_factories import FakeClock, make_hashes, make_index

from router.ownership import OwnershipIndex, PrefixMatch


def test_longest_prefix_of_a_learned_chain() -> None:
    index = make_index()
    index.learn("a", make_hashes(1, 2, 3))
    assert index.longest_prefix(make_hashes(1, 2, 3, 4, 5)) == PrefixMatch(frozenset({"a"}), 3)
    assert index.longest_prefix(make_hashes(1, 2)) == PrefixMatch(frozenset({"a"}), 2)
    # Another first block means another chain (hashes fingerprint the prefix).
    assert index.longest_prefix(make_hashes(9, 10)).matched_blocks == 0
    assert index.longest_prefix([]) == PrefixMatch(frozenset(), 0)


def test_owners_of_the_longest_prefix_only() -> None:
    index = make_index()
    index.learn("a", make_hashes(1, 2, 3, 4))
    index.learn("b", make_hashes(1, 2))
    assert index.longest_prefix(make_hashes(1, 2, 3, 4)) == PrefixMatch(frozenset({"a"}), 4)
    assert index.longest_prefix(make_hashes(1, 2, 7)) == PrefixMatch(frozenset({"a", "b"}), 2)


def test_the_search_from_the_tail_finds_every_owned_length() -> None:
    # Every prompt length n and every owned head m <= n: the search (tail first, then
    # bisection) must land on m, with m's owners, whatever the probes skip.
    for n in range(0, 40):
        for m in range(0, n + 1):
            index = make_index()
            chain = make_hashes(*range(1, n + 1))
            index.learn("a", chain[:m])
            if m:
                index.learn("b", chain[: m - 1] or chain[:1])  # other owners further up
            matched, owners = index.owners_of_longest_prefix(chain)
            assert matched == m, (n, m)
            expected = set() if m == 0 else {"a", "b"} if m == 1 else {"a"}
            assert set(owners) == expected, (n, m)


def test_forget_and_clear() -> None:
    index = make_index()
    index.confirm("a", make_hashes(1, 2, 3))
    index.confirm("b", make_hashes(1, 2, 3))
    index.forget("a", make_hashes(3))
    assert index.owners(make_hashes(3)[0]) == {"b"}
    index.clear("b")
    assert index.longest_prefix(make_hashes(1, 2, 3)) == PrefixMatch(frozenset({"a"}), 2)
    index.clear("a")
    assert len(index) == 0
    index.forget("nobody", make_hashes(1))  # no-op


def test_lru_bound_evicts_oldest_chains_tail_first() -> None:
    index = make_index(max_entries=5)
    index.learn("a", make_hashes(1, 2, 3))
    index.learn("b", make_hashes(10, 11, 12))
    assert len(index) == 5
    # The older chain lost its tail block 3, keeping its head: still a valid,
    # shorter prefix rather than a hole at block 0.
    assert index.longest_prefix(make_hashes(1, 2, 3)) == PrefixMatch(frozenset({"a"}), 2)
    assert index.longest_prefix(make_hashes(10, 11, 12)).matched_blocks == 3


def test_lookup_does_not_refresh_but_relearning_does() -> None:
    clock = FakeClock()
    index = make_index(max_entries=4, ttl_s=60.0, refresh_s=1.0, clock=clock)
    index.learn("a", make_hashes(1, 2))
    index.learn("b", make_hashes(5, 6))
    clock.advance(1.5)  # past the refresh interval
    index.learn("a", make_hashes(1, 2))  # refresh: 5, 6 are now the oldest
    index.learn("c", make_hashes(7))
    assert index.longest_prefix(make_hashes(1, 2)).matched_blocks == 2
    assert index.longest_prefix(make_hashes(5, 6)).matched_blocks == 1


def test_relearning_within_the_refresh_interval_writes_only_new_blocks() -> None:
    clock = FakeClock()
    index = make_index(max_entries=5, ttl_s=60.0, refresh_s=1.0, clock=clock)
    index.learn("a", make_hashes(1, 2))  # LRU order, oldest first: 2, 1
    index.learn("b", make_hashes(5, 6))  # 2, 1, 6, 5
    clock.advance(0.5)
    # 1, 2 were learned 0.5 s ago: only the new tail block is written, and it takes
    # their expiry, so no block of the chain outlives the blocks before it.
    index.learn("a", make_hashes(1, 2, 3))  # 2, 1, 6, 5, 3: 1 and 2 were not moved
    assert [_expiry(index, v, "a") for v in (1, 2, 3)] == [1060.0] * 3
    # So the LRU bound takes 2 (a hole in a's chain) where an exact LRU would take 6.
    index.learn("c", make_hashes(7))
    assert index.owners(make_hashes(2)[0]) == frozenset()
    assert index.longest_prefix(make_hashes(5, 6)).matched_blocks == 2
    # Past the interval a relearn writes the whole chain again and fills the hole.
    clock.advance(0.6)
    index.learn("a", make_hashes(1, 2, 3))
    assert index.longest_prefix(make_hashes(1, 2, 3)).matched_blocks == 3
    assert [_expiry(index, v, "a") for v in (1, 2, 3)] == [1061.1] * 3


def test_confirm_never_lowers_an_expiry_and_never_stops_a_learn() -> None:
    clock = FakeClock()
    index = make_index(ttl_s=60.0, refresh_s=1.0, clock=clock)
    index.learn("a", make_hashes(1, 2))
    clock.advance(0.5)
    index.confirm("a", make_hashes(1, 2, 3))
    # Learned 0.5 s ago, expiring later than the event's: kept.
    assert _expiry(index, 1, "a") == _expiry(index, 2, "a") == 1060.0
    # An event vouches for its own blocks only, not for the chain before them: their
    # expiry is refresh_s short of the TTL, never recent enough to stop a learn.
    assert _expiry(index, 3, "a") == 1059.5
    clock.advance(0.2)
    index.learn("a", make_hashes(1, 2, 3, 4))  # writes 4 and 3, after the fresh head 1, 2
    assert [_expiry(index, v, "a") for v in (1, 2, 3, 4)] == [1060.0] * 4


def test_a_hole_in_a_chain_fills_once_the_interval_has_passed() -> None:
    clock = FakeClock()
    index = make_index(ttl_s=60.0, refresh_s=1.0, clock=clock)
    index.learn("a", make_hashes(*range(1, 9)))
    index.forget("a", make_hashes(6))  # out of order: vLLM frees a chain tail first
    clock.advance(0.5)
    # The search for the fresh head probes 9, then 7 and 8, learned 0.5 s ago: only 9
    # is written, and the hole stays.
    index.learn("a", make_hashes(*range(1, 10)))
    assert index.owners(make_hashes(6)[0]) == frozenset()
    clock.advance(0.6)
    index.learn("a", make_hashes(*range(1, 10)))
    assert index.longest_prefix(make_hashes(*range(1, 10))) == PrefixMatch(frozenset({"a"}), 9)


def test_the_interval_shrinks_below_the_lru_turnover() -> None:
    """A small index that turns over in about 3 s, and a chain asked for every 0.6 s
    with a 10 s refresh interval: the interval falls under half the age of what the
    LRU bound evicts, so the chain is written again before the bound reaches it."""
    clock = FakeClock()
    index = make_index(max_entries=30, ttl_s=100.0, refresh_s=10.0, clock=clock)
    hot = make_hashes(1, 2, 3)
    for step in range(250):
        clock.advance(0.2)
        index.learn("b", make_hashes(1000 + 2 * step, 1001 + 2 * step))  # 10 new blocks/s
        if step == 20:  # the index is full, and its first evictions set the interval
            assert 1.0 < index._refresh_s < 2.0  # half the age of the evicted: about 3 s
        if step >= 20 and step % 3 == 0:
            index.learn("a", hot)
        if step > 20:
            assert index.longest_prefix(hot) == PrefixMatch(frozenset({"a"}), 3)
    assert 1.0 < index._refresh_s < 2.0


def _expiry(index: OwnershipIndex, value: int, replica: str) -> float:
    return index._entries[make_hashes(value)[0]][replica]


@settings(max_examples=80, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_learned_chain_is_fresh_to_within_the_refresh_interval(seed: int) -> None:
    """The contract of the refresh interval, on learns and stored-block events in any
    order: right after ``learn(r, chain)`` at time t every block of the chain has r with
    an expiry in (t + ttl - refresh, t + ttl], and along the chain no expiry exceeds an
    earlier block's; an event never shortens an expiry. (A removed block can leave a
    hole for up to ``refresh_s``: the test above.)"""
    rng = random.Random(seed)
    clock = FakeClock()
    ttl, refresh = 10.0, 1.0
    index = make_index(max_entries=10_000, ttl_s=ttl, refresh_s=refresh, clock=clock)
    chains = [make_hashes(*range(c * 10, c * 10 + 6)) for c in range(3)]
    for _ in range(150):
        chain = rng.choice(chains)[: rng.randint(1, 6)]
        replica = rng.choice("abc")
        action = rng.random()
        if action < 0.5:
            index.learn(replica, chain)
            now = clock()
            expiries = [index._entries[block][replica] for block in chain]
            assert all(now + ttl - refresh < e <= now + ttl for e in expiries)
            assert expiries == sorted(expiries, reverse=True)
        elif action < 0.75:
            # An event names the blocks a request stored: any stretch of a chain.
            start = rng.randrange(len(chain))
            stored = chain[start: rng.randint(start + 1, len(chain))]
            before = {b: index._entries[b].get(replica) for b in stored if b in index._entries}
            index.confirm(replica, stored)
            for block, known in before.items():
                assert known is None or index._entries[block][replica] >= known
        else:
            clock.advance(rng.choice([0.25, 0.5, 1.5, 4.0]))


def test_ttl_expires_each_replica_separately() -> None:
    clock = FakeClock()
    index = make_index(ttl_s=10.0, clock=clock)
    index.learn("a", make_hashes(1, 2, 3, 4))
    clock.advance(6)
    index.confirm("b", make_hashes(1, 2, 3, 4))
    clock.advance(5)  # a learned 11 s ago, b 5 s ago
    assert index.longest_prefix(make_hashes(1, 2, 3, 4)) == PrefixMatch(frozenset({"b"}), 4)
    clock.advance(5)
    assert index.longest_prefix(make_hashes(1, 2, 3, 4)).matched_blocks == 0
    # Only the probed hashes were purged, lazily: the search from the tail probes
    # blocks 3, 2 and 0, never block 1.
    assert len(index) == 1


def test_refresh_extends_ttl() -> None:
    clock = FakeClock()
    index = make_index(ttl_s=10.0, clock=clock)
    index.learn("a", make_hashes(1))
    clock.advance(9)
    index.learn("a", make_hashes(1))
    clock.advance(9)
    assert index.owners(make_hashes(1)[0]) == {"a"}


def test_validation() -> None:
    with pytest.raises(ValueError):
        OwnershipIndex(max_entries=0, ttl_s=1.0)
    with pytest.raises(ValueError):
        OwnershipIndex(max_entries=1, ttl_s=0.0)
    with pytest.raises(ValueError):
        OwnershipIndex(max_entries=1, ttl_s=1.0, refresh_s=1.0)
    with pytest.raises(ValueError):
        OwnershipIndex(max_entries=1, ttl_s=1.0, refresh_s=-0.1)


def test_drop_forgets_blocks_for_every_replica() -> None:
    index = make_index()
    index.learn("a", make_hashes(1, 2, 3))
    index.confirm("b", make_hashes(1, 2))
    assert index.drop(make_hashes(1, 2, 9)) == 2  # 9 was never known
    assert index.owners(make_hashes(1)[0]) == frozenset()
    assert len(index) == 1  # block 3 stays: only the named blocks go
    assert index.longest_prefix(make_hashes(1, 2)).matched_blocks == 0
