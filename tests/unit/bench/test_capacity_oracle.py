"""bench.oracle's capacity-bound oracle on tiny cases worked out by hand (block size 4)."""

from __future__ import annotations

import pytest

from bench.oracle import (
    CapacityOracleCache,
    capacity_oracle_from_blocks,
    capacity_oracle_hits,
    fleet_capacity_blocks,
    oracle_from_blocks,
    oracle_hits,
)

A = (9, ("a1", "a2"))  # 9 tokens: 2 full blocks, both eligible (the 9th token is computed)
B = (9, ("b1", "b2"))
C1 = (5, ("c1",))
D1 = (5, ("d1",))


def cached(prompts: list[tuple[int, tuple[str, ...]]], capacity: int) -> tuple[int, ...]:
    return capacity_oracle_from_blocks(prompts, block_size=4,
                                       capacity_blocks=capacity).per_request


def test_enough_capacity_equals_the_infinite_oracle() -> None:
    prompts = [A, B, A, C1, B, A]
    assert cached(prompts, 100) == oracle_from_blocks(prompts, block_size=4).per_request
    assert cached(prompts, 100) == (0, 0, 8, 0, 8, 8)


def test_a_prompt_evicted_by_others_misses() -> None:
    assert cached([A, B, A], 2) == (0, 0, 0)  # B evicted both of A's blocks
    assert cached([A, B, A], 4) == (0, 0, 8)


def test_eviction_takes_the_tail_first_so_the_head_survives() -> None:
    # After A, B-less: LRU order a2 (oldest), a1. C1 -> a2, a1, c1. D1 evicts a2 only.
    assert cached([A, C1, D1, A], 3) == (0, 0, 0, 4)


def test_a_hit_refreshes_its_blocks() -> None:
    # A, C1 fill 3 blocks; A again hits and becomes recent; D1 then evicts c1, not A.
    assert cached([A, C1, A, D1, A, C1], 3) == (0, 0, 8, 0, 8, 0)


def test_the_last_token_is_never_cached() -> None:
    assert cached([(8, ("a1", "a2")), (8, ("a1", "a2"))], 10) == (0, 4)


def test_token_ids_give_the_same_as_the_infinite_oracle_when_capacity_is_ample() -> None:
    prompts = [list(range(300)), list(range(300)), list(range(200)) + [7] * 100]
    big = capacity_oracle_hits(prompts, capacity_blocks=1000, block_size=16)
    assert big.per_request == oracle_hits(prompts, block_size=16).per_request
    small = capacity_oracle_hits(prompts, capacity_blocks=1, block_size=16)
    assert small.cached_tokens < big.cached_tokens


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity_blocks"):
        CapacityOracleCache(4, 0)


def test_fleet_capacity_is_replicas_times_blocks_per_replica() -> None:
    # SmolLM2-135M, block 128: 2,949,120 bytes a block, so 1 GiB holds 364 blocks.
    assert fleet_capacity_blocks(1, 1) == 364
    assert fleet_capacity_blocks(2, 1) == 728
