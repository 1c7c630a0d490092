"""Which documents to drop when documents compete for the ingress's memory and the
replicas' KV cache: a relevance x recency score under count and token bounds.

    score(d, now) = (1 + questions asked about d) x 0.5 ** (idle seconds / half_life_s)

Relevance is how often a document is asked about; recency halves it per
``half_life_s`` of idleness, so a document asked about 8 times an hour ago (with a
10-minute half-life) scores below one asked about once a minute ago. Plain LRU would
drop a heavily used document after one burst of one-off uploads; plain LFU would keep
a document that was popular yesterday forever.

``victims``:
1. every document idle for ``idle_ttl_s`` or more (stale), whatever the bounds;
2. then, lowest score first (ties: least recently used, then the smaller id), until
   at most ``max_documents`` documents and ``max_total_tokens`` tokens remain.
The document named by ``keep`` (the upload being admitted) is never a victim. The
clock is injected by the caller (``now``); the module keeps no state.
Cost: O(n log n) in the documents, n bounded by ``max_documents``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Reason(str, enum.Enum):
    IDLE = "idle"    # unused for idle_ttl_s: stale
    LIMIT = "limit"  # over max_documents or max_total_tokens: lowest score
    DELETED = "deleted"  # a client's DELETE (not chosen here; a metric label)


@dataclass(frozen=True, kw_only=True)
class EvictionPolicy:
    max_documents: int
    max_total_tokens: int
    half_life_s: float
    idle_ttl_s: float


@dataclass(frozen=True, kw_only=True)
class Usage:
    id: str
    tokens: int
    hits: int
    last_used_s: float


def score(usage: Usage, now_s: float, half_life_s: float) -> float:
    idle = max(0.0, now_s - usage.last_used_s)
    return (1 + usage.hits) * 0.5 ** (idle / half_life_s)


def victims(documents: Iterable[Usage], now_s: float, policy: EvictionPolicy, *,
            keep: str | None = None) -> list[tuple[str, Reason]]:
    """Documents to evict, in eviction order, with why."""
    out: list[tuple[str, Reason]] = []
    remaining: list[Usage] = []
    for doc in documents:
        if doc.id != keep and now_s - doc.last_used_s >= policy.idle_ttl_s:
            out.append((doc.id, Reason.IDLE))
        else:
            remaining.append(doc)
    count = len(remaining)
    tokens = sum(d.tokens for d in remaining)
    ranked = sorted((d for d in remaining if d.id != keep),
                    key=lambda d: (score(d, now_s, policy.half_life_s), d.last_used_s, d.id))
    for doc in ranked:
        if count <= policy.max_documents and tokens <= policy.max_total_tokens:
            break
        out.append((doc.id, Reason.LIMIT))
        count -= 1
        tokens -= doc.tokens
    return out
