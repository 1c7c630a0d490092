"""BlockCache: prefix hits, pinning, LRU eviction order, all-or-nothing allocation."""

from __future__ import annotations

import pytest

from bench.sim.block_cache import BlockCache
from tests.unit.bench.sim.sim_factories import make_hashes


def test_hit_is_the_leading_run_of_cached_blocks_capped_by_max_hits() -> None:
    cache = BlockCache(10)
    first = cache.allocate(make_hashes(1, 2, 3), 0, 3)
    assert first is not None and first.hit_blocks == 0 and first.stored == (1, 2, 3)
    cache.release(first)
    assert cache.cached_prefix(make_hashes(1, 2, 9, 3), 4) == 2
    assert cache.cached_prefix(make_hashes(1, 2, 3), 2) == 2  # last token always computed
    assert cache.cached_prefix(make_hashes(7, 1, 2), 3) == 0  # leading blocks only
    again = cache.allocate(make_hashes(1, 2, 3, 4), 0, 3)
    assert again is not None
    assert (again.hit_blocks, again.stored, again.evicted) == (3, (4,), ())


def test_release_queues_blocks_tail_first_and_eviction_takes_the_oldest() -> None:
    cache = BlockCache(6)
    a = cache.allocate(make_hashes(1, 2, 3), 0, 3)
    b = cache.allocate(make_hashes(4, 5), 0, 2)
    assert a is not None and b is not None
    cache.release(a)
    cache.release(b)
    # Freed tail first: each prompt's head is evicted after its tail.
    assert cache.eviction_order() == [3, 2, 1, 5, 4]
    c = cache.allocate(make_hashes(7, 8, 9), 0, 3)
    assert c is not None and c.evicted == (3, 2)
    assert cache.eviction_order() == [1, 5, 4]
    # A hit takes blocks out of the queue; releasing puts them at its young end.
    d = cache.allocate(make_hashes(1), 0, 1)
    assert d is not None and d.hit_blocks == 1 and cache.eviction_order() == [5, 4]
    cache.release(d)
    assert cache.eviction_order() == [5, 4, 1]


def test_pinned_blocks_are_never_evicted_and_a_misfit_changes_nothing() -> None:
    cache = BlockCache(4)
    running = cache.allocate(make_hashes(1, 2), 1, 2)
    assert running is not None and cache.used_blocks == 3
    # Needs 2 new blocks; only 1 is free and nothing unpinned can be evicted.
    assert cache.allocate(make_hashes(5, 6), 0, 2) is None
    assert cache.used_blocks == 3 and 1 in cache and 2 in cache
    # Sharing the pinned prefix costs no new block.
    shared = cache.allocate(make_hashes(1, 2, 3), 0, 3)
    assert shared is not None and shared.hit_blocks == 2 and cache.used_blocks == 4
    cache.release(running)
    assert cache.eviction_order() == []  # still pinned by ``shared``
    cache.release(shared)
    assert cache.eviction_order() == [3, 2, 1] and cache.used_blocks == 3


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BlockCache(0)
