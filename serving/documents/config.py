"""The `documents` section of the service config: document analysis (/v1/documents).

Validation only; the state it bounds lives in each ingress (`serving/documents/`).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from serving.config_section import ConfigSection


class DocumentConfig(ConfigSection):
    """Document analysis, /v1/documents (docs/documents.md); state per ingress."""

    max_document_bytes: int = Field(1_048_576, ge=1, le=64 * 1_048_576)
    """Largest uploaded text in UTF-8 bytes (413 above it): bounds the ingress's work per
    upload, which tokenises and embeds every chunk."""
    chunk_tokens: int = Field(200, ge=16, le=8192)
    """Target chunk length in the served model's tokens. The default keeps a chunk within
    the embedding model's input, so all of it is embedded; raise it only with an
    embedding model that reads longer inputs."""
    chunk_overlap_tokens: int = Field(32, ge=0, le=4096)
    """Tokens (whole sentences or paragraphs) a chunk repeats from the one before, so a
    fact split by a boundary is whole in at least one chunk; below `chunk_tokens`."""
    lead_tokens: int = Field(256, ge=1)
    """A document that fits the window whole, asked a question (with `max_tokens`) too
    long to leave room for all of it, is answered from its first chunks up to this many
    tokens (a head of the prewarmed whole, so still cached) plus excerpts picked by
    similarity. Documents longer than the window are cut into sections instead."""
    top_k: int = Field(6, ge=1, le=256)
    """Most excerpts picked by similarity for one question, where excerpts are used: the
    lead fallback above and the naive `context_order: "similarity"` baseline."""
    answer_reserve_tokens: int = Field(320, ge=1)
    """Question plus answer tokens a cached anchor leaves free in the window: a document
    that fits the window with this reserve is prewarmed whole; a longer one is cut into
    sections that each leave it. Larger: more room for long questions and answers,
    more (smaller) sections per document."""
    max_section_legs: int = Field(3, ge=1, le=8)
    """Most sections one question is answered from. A question whose best chunks lie in
    several sections is answered from each (each a cache hit) and the answers combined
    by one more short request; each leg is a request of its own (a cached prompt and its
    answer's decode), so a few bound the work one question can cause."""
    leg_similarity_margin: float = Field(0.03, ge=0, le=2, allow_inf_nan=False)
    """Chunks whose cosine similarity to the question is within this margin of the best
    chunk's count as answering it too; a question is answered from the fewest sections
    holding them all. 0: the best chunk's section alone; larger: more questions
    map-reduced over several sections (each leg a cache hit, plus a combine request)."""
    default_max_tokens: int = Field(64, ge=1)
    """Answer length of an `ask` that does not set `max_tokens`."""
    max_question_chars: int = Field(4096, ge=1)
    """Longest question in characters (400 above it)."""
    max_documents: int = Field(64, ge=1, le=100_000)
    """Documents kept per ingress; beyond it the lowest relevance x recency score goes."""
    max_total_tokens: int = Field(1_048_576, ge=1)
    """Tokens of all kept documents together (their text and vectors live in the
    ingress); beyond it the lowest-scoring documents are evicted. Size it to the
    ingress's memory."""
    recency_half_life_s: float = Field(600.0, gt=0, allow_inf_nan=False)
    """A document's eviction score, (1 + questions asked), halves per this many idle
    seconds: a busy document outlives an idle one, a long-idle one goes first."""
    idle_ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False)
    """A document not asked about for this long is dropped, with its prewarmed prefix
    and the router's ownership of its blocks."""

    @model_validator(mode="after")
    def _bounds(self) -> DocumentConfig:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be below chunk_tokens")
        return self
