"""The hottest prefixes per ring key: what a replica joining the ring should prefill.

When a replica joins, the ring hands it about 1/N of the keys, but the prefixes of
those keys that are hot already have owners elsewhere, and ownership wins over the
ring (``policy.py``): the newcomer gets only new keys and cold spills. Replaying the
hottest prefixes of its arc on it first (a prefill each) makes it an owner of them,
so their load splits onto it with cache hits instead of full prefills.

Data: ``ring key -> entry``, where the ring key is the one the policy routes by
(the first block's hash, which already includes the tenant's cache salt, or a
session key) and an entry holds:

- a score, an exponentially decayed count of observations with half-life
  ``half_life_s``. Kept in *forward-decay* form, ``sum 2**((t_i - t0) / h)`` for a
  reference time ``t0``: every entry decays by the same factor over time, so ranking
  needs no decay at all, an observation is one ``pow``, and the decayed count at
  ``now`` is ``score * 2**((t0 - now) / h)``. ``t0`` moves forward (all scores
  rescaled, O(entries)) before the exponent could overflow a float, about every
  500 half-lives.
- the prefix to replay: the longest prefix, in whole blocks, common to every request
  seen under the key (a shared system prompt, a conversation's earlier turns), cut to
  ``max_blocks``. Block hashes are chained, so two chains agree up to block ``k``
  exactly when their hash ``k`` is equal: the common prefix is a binary search,
  O(log k) comparisons. Entries keep references to the first request's token tuple
  and hash list, never copies.
- the request's cache salt and LoRA adapter, to rebuild the request that replays it.

Bound: at most ``2 x capacity`` entries; when the table reaches that, the
``capacity`` highest scores stay (ties: the lower ring key), O(c log c) once per c
new keys, so O(log c) amortised per observation. Ranking by decayed score means a
prefix hot an hour ago loses its place to one hot now.

Cost per ``observe``: a dict probe, a ``pow`` and, for a known key, one hash
comparison (the binary search only when the shared prefix shrinks); a new key is
one insert: about 1-2.5 us measured on a 2-core machine (4k-token prompts), beside
the decision's tens of microseconds. ``arc_of`` is O(entries log(V N)) (a ring
lookup per entry) and runs once per joining replica, off the routing path.
Deterministic: no randomness; the clock is the caller's ``now``.
Not thread-safe; the policy serialises access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from router.hashing import BlockHash
from router.ring import HashRing

# Largest exponent of 2 a score may reach before t0 moves: far below a float's 1023,
# so the sum of thousands of such terms stays finite.
_MAX_EXPONENT = 500.0


@dataclass(frozen=True, slots=True)
class HotPrefix:
    """One hot prefix, ready to replay: its tokens and the tenant they belong to."""

    ring_key: int
    # Whole blocks of the prompt, as the engine sees them.
    token_ids: tuple[int, ...]
    blocks: int
    cache_salt: str | None
    lora_name: str | None
    lora_path: str | None
    # Decayed observation count at the time of the query.
    heat: float


class _Entry:
    __slots__ = ("blocks", "cache_salt", "hashes", "lora_name", "lora_path", "score",
                 "token_ids")

    def __init__(self, token_ids: Sequence[int], hashes: Sequence[BlockHash], blocks: int,
                 cache_salt: str | None, lora_name: str | None, lora_path: str | None,
                 score: float) -> None:
        self.token_ids = token_ids
        self.hashes = hashes
        self.blocks = blocks
        self.cache_salt = cache_salt
        self.lora_name = lora_name
        self.lora_path = lora_path
        self.score = score


def _common_blocks(a: Sequence[BlockHash], b: Sequence[BlockHash], limit: int) -> int:
    """Length of the common prefix of two hash chains, at most ``limit``: chained
    hashes agree at index k only if they agree at every index before it."""
    lo, hi = 0, min(limit, len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class HotPrefixTracker:
    """A bounded table of the hottest prefixes, by the ring key they route by."""

    __slots__ = ("_block_size", "_capacity", "_entries", "_half_life_s", "_max_blocks", "_t0")

    def __init__(self, *, capacity: int, block_size: int, max_blocks: int,
                 half_life_s: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        if not 0.0 < half_life_s < math.inf:
            raise ValueError(f"half_life_s must be finite and > 0, got {half_life_s}")
        self._capacity = capacity
        self._block_size = block_size
        self._max_blocks = max_blocks
        self._half_life_s = half_life_s
        self._t0: float | None = None
        self._entries: dict[int, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, ring_key: int, token_ids: Sequence[int], hashes: Sequence[BlockHash],
                *, now: float, cache_salt: str | None = None, lora_name: str | None = None,
                lora_path: str | None = None) -> None:
        """Count one request routed by ``ring_key``; ``hashes`` are its full blocks'
        hashes (head first) and ``token_ids`` its prompt. Both are kept by reference."""
        if self._t0 is None:
            self._t0 = now
        exponent = (now - self._t0) / self._half_life_s
        if exponent > _MAX_EXPONENT:
            self._rebase(now)
            exponent = 0.0
        weight = 2.0 ** exponent
        entry = self._entries.get(ring_key)
        blocks = min(len(hashes), len(token_ids) // self._block_size, self._max_blocks)
        if entry is not None:
            entry.score += weight
            if entry.blocks:
                last = entry.blocks - 1
                # Usually the request extends the whole shared prefix: one comparison.
                if len(hashes) <= last or hashes[last] != entry.hashes[last]:
                    entry.blocks = _common_blocks(entry.hashes, hashes, entry.blocks)
            elif blocks:
                # A session's first turn may be shorter than a block; its later turns
                # extend it, so the first one with blocks stands for the session.
                entry.token_ids, entry.hashes, entry.blocks = token_ids, hashes, blocks
            return
        self._entries[ring_key] = _Entry(token_ids, hashes, blocks, cache_salt, lora_name,
                                         lora_path, weight)
        if len(self._entries) >= 2 * self._capacity:
            self._prune()

    def arc_of(self, replica_id: str, ring: HashRing, limit: int, *,
               now: float) -> list[HotPrefix]:
        """The ``limit`` hottest prefixes whose ring home (``ring.owner`` of their key,
        the first of its walk) is ``replica_id``, hottest first (ties: lower key)."""
        if limit < 1 or not self._entries or replica_id not in ring:
            return []
        mine = [(key, e) for key, e in self._entries.items()
                if e.blocks and ring.owner(key) == replica_id]
        mine.sort(key=lambda item: (-item[1].score, item[0]))
        return [self._hot(key, e, now) for key, e in mine[:limit]]

    def hottest(self, limit: int, *, now: float) -> list[HotPrefix]:
        """The ``limit`` hottest prefixes overall, hottest first (telemetry, tests)."""
        ranked = sorted(self._entries.items(), key=lambda item: (-item[1].score, item[0]))
        return [self._hot(key, e, now) for key, e in ranked[:limit] if e.blocks]

    def _hot(self, key: int, entry: _Entry, now: float) -> HotPrefix:
        t0 = self._t0 if self._t0 is not None else now
        return HotPrefix(
            ring_key=key,
            token_ids=tuple(entry.token_ids[:entry.blocks * self._block_size]),
            blocks=entry.blocks,
            cache_salt=entry.cache_salt,
            lora_name=entry.lora_name,
            lora_path=entry.lora_path,
            heat=entry.score * 2.0 ** ((t0 - now) / self._half_life_s),
        )

    def _prune(self) -> None:
        ranked = sorted(self._entries.items(), key=lambda item: (-item[1].score, item[0]))
        self._entries = dict(ranked[:self._capacity])

    def _rebase(self, now: float) -> None:
        assert self._t0 is not None
        factor = 2.0 ** ((self._t0 - now) / self._half_life_s)
        for entry in self._entries.values():
            entry.score *= factor  # underflows to 0 for long-cold entries: they go first
        self._t0 = now
