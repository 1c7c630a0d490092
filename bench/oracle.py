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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    seen: set[bytes] = set()
    per_request = []
    total = 0
    for tokens in prompts:
        digests = hasher.digests(tokens)
        eligible = max(len(tokens) - 1, 0) // block_size  # the last token is always computed
        hits = 0
        while hits < eligible and digests[hits] in seen:
            hits += 1
        per_request.append(hits * block_size)
        total += len(tokens)
        seen.update(digests)
    return OracleResult(cached_tokens=sum(per_request), prompt_tokens=total,
                        per_request=tuple(per_request))
