"""One replica's KV block cache: a fixed number of blocks, prefix hits, LRU eviction.

Model of vLLM's block pool (``vllm/v1/core/block_pool.py``) at the level routing
can observe:

* ``capacity_blocks`` blocks in all. A running request pins its blocks: the hashed
  full blocks of its prompt (shared with other requests that have the same prefix,
  reference-counted) and anonymous ones (the partial last prompt block and the
  generated tokens), which are never cached.
* A hit is the longest run of *leading* prompt blocks present, capped so that
  the last prompt token is always computed (vLLM needs its logits): at most
  ``(prompt_tokens - 1) // block_size`` blocks.
* Blocks are cached when allocated, as vLLM v1 does, so a request admitted after
  another with the same prefix hits it even while that one is still prefilling.
* Unpinned cached blocks form the eviction queue, least recently freed first. A
  request's blocks are freed tail first, so its head is evicted last and cached
  prefixes stay prefix-closed (vLLM frees in the same order for the same reason).
* An allocation that does not fit after evicting every unpinned block fails; the
  engine keeps the request waiting (``engine.py``).

Invariant: ``len(_pinned) + len(_free) + _anonymous <= capacity_blocks``; a hash is
in at most one of ``_pinned`` and ``_free``. Cost: O(blocks of the request) per
allocation and release (dict and OrderedDict operations); eviction O(1) a block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from router import BlockHash


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one admitted request holds, and what its admission changed."""

    hashes: tuple[BlockHash, ...]
    anonymous_blocks: int
    # Leading prompt blocks that were cached (the hit).
    hit_blocks: int
    # Blocks newly cached by this allocation (KV event BlockStored), head first.
    stored: tuple[BlockHash, ...]
    # Blocks evicted to make room (KV event BlockRemoved), in eviction order.
    evicted: tuple[BlockHash, ...]


class BlockCache:
    __slots__ = ("_anonymous", "_capacity", "_free", "_pinned")

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self._capacity = capacity_blocks
        # Hash -> number of running requests holding it (>= 1).
        self._pinned: dict[BlockHash, int] = {}
        # Unpinned cached blocks, least recently freed first (evicted from the front).
        self._free: OrderedDict[BlockHash, None] = OrderedDict()
        self._anonymous = 0

    @property
    def capacity_blocks(self) -> int:
        return self._capacity

    @property
    def used_blocks(self) -> int:
        return len(self._pinned) + len(self._free) + self._anonymous

    @property
    def cached_blocks(self) -> int:
        """Blocks a later request could hit (pinned or free)."""
        return len(self._pinned) + len(self._free)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._pinned or block_hash in self._free

    def eviction_order(self) -> list[BlockHash]:
        """Unpinned cached blocks, next to be evicted first (for tests and reports)."""
        return list(self._free)

    def cached_prefix(self, hashes: Sequence[BlockHash], max_blocks: int) -> int:
        """Leading blocks of ``hashes`` (at most ``max_blocks``) that are cached."""
        pinned, free = self._pinned, self._free
        hits = 0
        limit = min(max_blocks, len(hashes))
        while hits < limit and (hashes[hits] in pinned or hashes[hits] in free):
            hits += 1
        return hits

    def allocate(self, hashes: Sequence[BlockHash], anonymous_blocks: int,
                 max_hit_blocks: int) -> Allocation | None:
        """Pin ``hashes`` (caching the missing ones) and ``anonymous_blocks`` more,
        evicting unpinned blocks as needed; None, changing nothing, if they do not fit.

        ``max_hit_blocks`` caps the reported hit (see the module docstring); blocks
        past the hit that happen to be cached are pinned and reused all the same.
        """
        pinned, free = self._pinned, self._free
        new = 0
        free_of_ours = 0
        for block_hash in hashes:
            if block_hash in pinned:
                continue
            if block_hash in free:
                free_of_ours += 1
            else:
                new += 1
        shortfall = self.used_blocks + new + anonymous_blocks - self._capacity
        if shortfall > len(free) - free_of_ours:
            return None
        hit_blocks = self.cached_prefix(hashes, max_hit_blocks)
        stored = []
        for block_hash in hashes:
            count = pinned.get(block_hash)
            if count is not None:
                pinned[block_hash] = count + 1
            elif block_hash in free:
                del free[block_hash]
                pinned[block_hash] = 1
        evicted = []
        for _ in range(max(shortfall, 0)):
            block_hash, _ = free.popitem(last=False)
            evicted.append(block_hash)
        for block_hash in hashes:
            if block_hash not in pinned:
                pinned[block_hash] = 1
                stored.append(block_hash)
        self._anonymous += anonymous_blocks
        return Allocation(hashes=tuple(hashes), anonymous_blocks=anonymous_blocks,
                          hit_blocks=hit_blocks, stored=tuple(stored), evicted=tuple(evicted))

    def release(self, allocation: Allocation) -> None:
        """Unpin a finished request's blocks; the last holder queues them for
        eviction tail first, so the prompt's head stays longest."""
        pinned, free = self._pinned, self._free
        for block_hash in reversed(allocation.hashes):
            count = pinned[block_hash]
            if count > 1:
                pinned[block_hash] = count - 1
            else:
                del pinned[block_hash]
                free[block_hash] = None
        self._anonymous -= allocation.anonymous_blocks
