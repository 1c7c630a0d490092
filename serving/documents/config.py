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
    """A document too long for the context window always opens with its first chunks up
    to this many tokens: the fixed, prewarmed head every question about it shares. Raise
    it for documents whose opening matters to most questions."""
    top_k: int = Field(6, ge=1, le=256)
    """Most chunks picked by similarity for one question (the window may hold fewer).
    Raise it for questions whose answers are spread over a document."""
    answer_reserve_tokens: int = Field(320, ge=1)
    """Question plus answer tokens a whole document leaves free: a document that fits
    the window with this reserve is prewarmed whole, a longer one by its lead."""
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
    def _bounds(self) -> "DocumentConfig":
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be below chunk_tokens")
        return self
