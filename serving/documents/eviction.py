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
2. then each owner (tenant) over its own quota (``quotas``: documents and tokens)
   loses its lowest-scoring documents until it is within it;
3. then, while more than ``max_documents`` documents or ``max_total_tokens`` tokens
   remain, the owner holding the most tokens (not counting ``keep``; ties: more
   documents, then the smaller name) loses its lowest-scoring document. So a tenant's
   uploads evict its own documents, and another tenant's only while it holds more.
Lowest score first, ties: least recently used, then the smaller id. The document
named by ``keep`` (the upload being admitted) is never a victim. The clock is
injected by the caller (``now``); the module keeps no state.
Cost: O(n log n) in the documents, n bounded by ``max_documents``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
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
class Quota:
    """What one owner may keep (already capped by the service-wide policy)."""

    max_documents: int
    max_total_tokens: int

    @classmethod
    def within(cls, policy: EvictionPolicy, *, max_documents: int | None,
               max_total_tokens: int | None) -> "Quota":
        """An owner's own bounds (None: the policy's), never above the policy's."""
        return cls(max_documents=min(max_documents or policy.max_documents,
                                     policy.max_documents),
                   max_total_tokens=min(max_total_tokens or policy.max_total_tokens,
                                        policy.max_total_tokens))


@dataclass(frozen=True, kw_only=True)
class Usage:
    id: str
    tokens: int
    hits: int
    last_used_s: float
    owner: str = ""


def score(usage: Usage, now_s: float, half_life_s: float) -> float:
    idle = max(0.0, now_s - usage.last_used_s)
    return (1 + usage.hits) * 0.5 ** (idle / half_life_s)


def victims(documents: Iterable[Usage], now_s: float, policy: EvictionPolicy, *,
            keep: str | None = None,
            quotas: Mapping[str, Quota] | None = None) -> list[tuple[str, Reason]]:
    """Documents to evict, in eviction order, with why. An owner absent from
    ``quotas`` has the service-wide bounds as its own."""
    out: list[tuple[str, Reason]] = []
    remaining: list[Usage] = []
    for doc in documents:
        if doc.id != keep and now_s - doc.last_used_s >= policy.idle_ttl_s:
            out.append((doc.id, Reason.IDLE))
        else:
            remaining.append(doc)
    count: dict[str, int] = {}
    tokens: dict[str, int] = {}
    kept: dict[str, int] = {}  # tokens of ``keep``, not counted as its owner's holding
    for d in remaining:
        count[d.owner] = count.get(d.owner, 0) + 1
        tokens[d.owner] = tokens.get(d.owner, 0) + d.tokens
        if d.id == keep:
            kept[d.owner] = d.tokens
    ranked = sorted((d for d in remaining if d.id != keep),
                    key=lambda d: (score(d, now_s, policy.half_life_s), d.last_used_s, d.id))

    def evict(doc: Usage) -> None:
        ranked.remove(doc)
        count[doc.owner] -= 1
        tokens[doc.owner] -= doc.tokens
        out.append((doc.id, Reason.LIMIT))

    for owner, quota in sorted((quotas or {}).items()):
        for doc in [d for d in ranked if d.owner == owner]:
            if (count.get(owner, 0) <= quota.max_documents
                    and tokens.get(owner, 0) <= quota.max_total_tokens):
                break
            evict(doc)
    while ranked and (sum(count.values()) > policy.max_documents
                      or sum(tokens.values()) > policy.max_total_tokens):
        held = {o: (tokens[o] - kept.get(o, 0), count[o] - (o in kept)) for o in count}
        heaviest = min((o for o in held if held[o][1] > 0),
                       key=lambda o: (-held[o][0], -held[o][1], o))
        evict(next(d for d in ranked if d.owner == heaviest))
    return out
