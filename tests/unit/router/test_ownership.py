"""OwnershipIndex: prefix lookup, events, LRU bound and TTL on a fake clock."""

from __future__ import annotations

import pytest
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
    index = make_index(max_entries=4)
    index.learn("a", make_hashes(1, 2))
    index.learn("b", make_hashes(5, 6))
    index.learn("a", make_hashes(1, 2))  # refresh: 5, 6 are now the oldest
    index.learn("c", make_hashes(7))
    assert index.longest_prefix(make_hashes(1, 2)).matched_blocks == 2
    assert index.longest_prefix(make_hashes(5, 6)).matched_blocks == 1


def test_ttl_expires_each_replica_separately() -> None:
    clock = FakeClock()
    index = make_index(ttl_s=10.0, clock=clock)
    index.learn("a", make_hashes(1, 2))
    clock.advance(6)
    index.confirm("b", make_hashes(1, 2))
    clock.advance(5)  # a learned 11 s ago, b 5 s ago
    assert index.longest_prefix(make_hashes(1, 2)) == PrefixMatch(frozenset({"b"}), 2)
    clock.advance(5)
    assert index.longest_prefix(make_hashes(1, 2)).matched_blocks == 0
    assert len(index) == 1  # only the probed hash was purged lazily


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


def test_drop_forgets_blocks_for_every_replica() -> None:
    index = make_index()
    index.learn("a", make_hashes(1, 2, 3))
    index.confirm("b", make_hashes(1, 2))
    assert index.drop(make_hashes(1, 2, 9)) == 2  # 9 was never known
    assert index.owners(make_hashes(1)[0]) == frozenset()
    assert len(index) == 1  # block 3 stays: only the named blocks go
    assert index.longest_prefix(make_hashes(1, 2)).matched_blocks == 0
