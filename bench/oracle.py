"""The best prefix-cache hit rate any router could reach on a trace.

Model: one cache of infinite capacity shared by every replica (no eviction, no
routing mistakes). A request of ``n`` prompt tokens is served from cache for its
leading full blocks whose *chained* prefix (the block and everything before it)
appeared in any earlier request, stopping at the first block that did not.

One engine rule is kept, because ignoring it would put the oracle above what any
engine can deliver: vLLM always computes the last prompt token (it needs its
logits), so only full blocks within the first ``n - 1`` tokens can hit. A repeated
block-aligned prompt of 8 tokens with block size 4 gets 4 cached tokens, not 8.
After its lookup, each request adds all of its full blocks to the cache, as the
engine does once it has prefilled them.

Blocks are identified by the engine's own chained digests (``router.PrefixHasher``),
so "same chained prefix" means what it means for vLLM's prefix cache.
Cost: one SHA-256 per full block of every prompt.

``CapacityOracleCache`` bounds the same model by memory: one LRU cache holding the
fleet's total KV capacity (replicas x blocks per replica), still with perfect
placement (any request may use any cached block). After a request's lookup its
blocks are touched tail first, so its head block is the most recently used and is
evicted last -- vLLM frees a request's blocks in that order for the same reason: a
cached prefix stays prefix-closed. No request's blocks are pinned (no concurrency
is modelled), so this is an upper bound for a fleet of that size, not a simulation
(``bench/sim`` is the simulation). ``fleet_capacity_blocks`` is that capacity for a
live run's fleet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from router import PrefixHasher

# vLLM CPU's KV block size (SETUP-NOTES: "caches prefixes in 128-token blocks").
DEFAULT_ORACLE_BLOCK_SIZE = 128


@dataclass(frozen=True, kw_only=True)
class OracleResult:
    cached_tokens: int
    prompt_tokens: int
    # Cached tokens per request, in trace order.
    per_request: tuple[int, ...]

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def oracle_hits(prompts: Iterable[Sequence[int]], *,
                block_size: int = DEFAULT_ORACLE_BLOCK_SIZE) -> OracleResult:
    """Oracle cached tokens of each prompt (token ids), in order of arrival."""
    hasher = PrefixHasher(block_size)
    return oracle_from_blocks(((len(tokens), hasher.digests(tokens)) for tokens in prompts),
                              block_size=block_size)


def oracle_from_blocks(prompts: Iterable[tuple[int, Sequence[Hashable]]], *,
                       block_size: int) -> OracleResult:
    """``oracle_hits`` from ``(prompt tokens, chained block hashes)`` pairs, for callers
    that already hashed the prompts; any hash form works."""
    cache = OracleCache(block_size)
    per_request = [cache.observe(num_tokens, blocks) for num_tokens, blocks in prompts]
    return OracleResult(cached_tokens=cache.cached_tokens, prompt_tokens=cache.prompt_tokens,
                        per_request=tuple(per_request))


class OracleCache:
    """The oracle's infinite shared cache, fed one prompt at a time (the simulator
    keeps one beside each run instead of holding the whole trace)."""

    def __init__(self, block_size: int) -> None:
        self._block_size = block_size
        self._seen: set[Hashable] = set()
        self.cached_tokens = 0
        self.prompt_tokens = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def observe(self, num_tokens: int, blocks: Sequence[Hashable]) -> int:
        """The prompt's oracle cached tokens; then its blocks are cached."""
        seen = self._seen
        eligible = max(num_tokens - 1, 0) // self._block_size  # the last token is computed
        hits = 0
        while hits < eligible and blocks[hits] in seen:
            hits += 1
        seen.update(blocks)
        self.cached_tokens += hits * self._block_size
        self.prompt_tokens += num_tokens
        return hits * self._block_size


class CapacityOracleCache:
    """The capacity-bound oracle: one LRU cache of ``capacity_blocks`` blocks."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self._block_size = block_size
        self._capacity = capacity_blocks
        # Least recently used first.
        self._lru: OrderedDict[Hashable, None] = OrderedDict()
        self.cached_tokens = 0
        self.prompt_tokens = 0

    def observe(self, num_tokens: int, blocks: Sequence[Hashable]) -> int:
        lru = self._lru
        eligible = max(num_tokens - 1, 0) // self._block_size
        hits = 0
        while hits < eligible and blocks[hits] in lru:
            hits += 1
        for block in reversed(blocks):  # tail first: the head ends most recent
            lru[block] = None
            lru.move_to_end(block)
        while len(lru) > self._capacity:
            lru.popitem(last=False)
        self.cached_tokens += hits * self._block_size
        self.prompt_tokens += num_tokens
        return hits * self._block_size


def capacity_oracle_hits(prompts: Iterable[Sequence[int]], *, capacity_blocks: int,
                         block_size: int = DEFAULT_ORACLE_BLOCK_SIZE) -> OracleResult:
    """``oracle_hits`` bounded by ``capacity_blocks`` of KV cache in all (LRU)."""
    hasher = PrefixHasher(block_size)
    return capacity_oracle_from_blocks(
        ((len(tokens), hasher.digests(tokens)) for tokens in prompts),
        block_size=block_size, capacity_blocks=capacity_blocks)


def capacity_oracle_from_blocks(prompts: Iterable[tuple[int, Sequence[Hashable]]], *,
                                block_size: int, capacity_blocks: int) -> OracleResult:
    cache = CapacityOracleCache(block_size, capacity_blocks)
    per_request = [cache.observe(num_tokens, blocks) for num_tokens, blocks in prompts]
    return OracleResult(cached_tokens=cache.cached_tokens, prompt_tokens=cache.prompt_tokens,
                        per_request=tuple(per_request))


def fleet_capacity_blocks(replicas: int, kv_cache_gib: int, *,
                          block_size: int = DEFAULT_ORACLE_BLOCK_SIZE,
                          model_config: Path | None = None) -> int:
    """KV blocks of the whole fleet: replicas x what ``kv_cache_gib`` holds for the model
    (the default model's ``config.json``, else SmolLM2-135M's geometry)."""
    from bench.sim.engine import SMOLLM2_135M_GEOMETRY, kv_capacity_blocks

    geometry: Path | dict[str, object] = SMOLLM2_135M_GEOMETRY
    if model_config is not None and model_config.is_file():
        geometry = model_config
    return replicas * kv_capacity_blocks(kv_cache_gib * 2**30, geometry, block_size=block_size)


def default_model_config() -> Path | None:
    """The default model's ``config.json`` once it is built (its geometry sizes the fleet)."""
    from serving.models.default import default_model_path

    path = default_model_path() / "config.json"
    return path if path.is_file() else None
