"""A document as one ingress holds it, and its id.

A document belongs to the tenant that uploaded it (``owner``): its id derives from
its content and that tenant's cache salt, and its anchors (the whole text's, or each
section's) and questions are served under that salt (serving/tenants/identity.py).
Plain state: the document service (``service.py``) owns and mutates it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from serving.documents.assembly import Mode
from serving.documents.chunking import Chunk
from serving.documents.eviction import Usage
from serving.documents.index import VectorIndex
from serving.documents.sections import SectionAnchor
from serving.prefixes.store import PrefixKey
from serving.tenants.identity import Tenant


@dataclass(kw_only=True)
class Document:
    id: str
    owner: Tenant
    name: str
    model: str
    text: str
    chunks: tuple[Chunk, ...]
    index: VectorIndex
    tokens: int  # the whole text's
    lead_count: int
    lead_tokens: int
    anchor_mode: Mode  # whole text, or sections (each its own anchor)
    overhead_tokens: int  # template + instruction + name, without any text
    anchor_tokens: int  # chat tokens of the anchor's system message
    prefix_key: PrefixKey | None  # None: the anchor is shorter than one KV block
    cacheable_tokens: int
    anchor_token_ids: tuple[int, ...]
    sections: tuple[SectionAnchor, ...]  # empty for a whole document
    fresh_tokens: tuple[int, ...]  # per chunk, its overlap not counted (sections only)
    created_at: float
    last_used_at: float
    registered_at: float
    asks: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    chunk_hits: dict[int, int] = field(default_factory=dict)

    @property
    def salt(self) -> str:
        """The cache salt its anchors and its questions are served under."""
        return self.owner.cache_salt()

    @property
    def kept_tokens(self) -> int:
        """Tokens the document keeps warm: its sections' (their overlaps counted in
        each), or its text's."""
        return max(self.tokens, sum(a.token_end - a.token_start for a in self.sections))

    def anchors(self) -> list[tuple[PrefixKey | None, tuple[int, ...]]]:
        """(prefix key, token ids) of every registered anchor: the whole text's or
        each section's."""
        if self.sections:
            return [(a.prefix_key, a.token_ids) for a in self.sections]
        return [(self.prefix_key, self.anchor_token_ids)]

    def usage(self) -> Usage:
        return Usage(id=self.id, tokens=self.kept_tokens, hits=self.asks,
                     last_used_s=self.last_used_at, owner=self.owner.name)


def document_id(model: str, name: str, text: str, salt: str) -> str:
    """Derived from the content and the owner's cache salt (like a prefix key): the
    same upload by one tenant is the same document, by two tenants two documents, and
    no client can point an id at other content."""
    digest = hashlib.sha256("\0".join(("cacheroute-document-v1", model, name, text, salt))
                            .encode()).hexdigest()
    return f"doc-{digest[:32]}"
