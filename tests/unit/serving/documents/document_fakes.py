"""make_* builders for the document service's unit tests.

The tokenizer counts whitespace-separated words (chat messages add 4 tokens each for
the template); the embedder is a hashed bag of words, so texts sharing words are
similar and the ranking is deterministic. The prefix registry is the real one over
the prefix tests' fake backend (tests/unit/serving/prefixes/prefix_fakes.py), whose routing side is
the real policy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from serving.documents.eviction import EvictionPolicy
from serving.documents.metrics import DocumentMetrics
from serving.documents.service import DocumentService, DocumentSettings
from tests.unit.serving.prefixes.prefix_fakes import MODEL, Clock, FakeBackend, make_registry, make_store

DIMENSIONS = 64


def count_words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


class WordTokenizer:
    def __init__(self) -> None:
        self.chat_calls = 0
        self.salts: set[str] = set()

    def count(self, texts: Sequence[str]) -> list[int]:
        return count_words(texts)

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], salt: str) -> int:
        self.chat_calls += 1
        self.salts.add(salt)
        return sum(4 + len(str(m.get("content", "")).split()) for m in messages)


class BagOfWordsEmbedder:
    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if len(word) > 3:  # skip the, and, ...: like an embedding's stop words
                    slot = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big")
                    out[row, slot % DIMENSIONS] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


def make_doc_settings(**overrides: Any) -> DocumentSettings:
    eviction = overrides.pop("eviction", None) or EvictionPolicy(
        max_documents=overrides.pop("max_documents", 8),
        max_total_tokens=overrides.pop("max_total_tokens", 100_000),
        half_life_s=600.0, idle_ttl_s=overrides.pop("idle_ttl_s", 3600.0))
    fields: dict[str, Any] = {
        "models": frozenset({MODEL}), "max_model_len": 400, "max_document_bytes": 200_000,
        "chunk_tokens": 40, "chunk_overlap_tokens": 8, "lead_tokens": 50, "top_k": 3,
        "answer_reserve_tokens": 60, "max_section_legs": 3, "leg_similarity_margin": 0.05,
        "default_max_tokens": 16, "max_question_chars": 500,
        "eviction": eviction,
    }
    fields.update(overrides)
    return DocumentSettings(**fields)


def make_service(*, clock: Clock | None = None, backend: FakeBackend | None = None,
                 metrics: CollectorRegistry | None = None, **overrides: Any) -> tuple[DocumentService, FakeBackend, Clock]:
    clock = clock or Clock()
    backend = backend or FakeBackend()
    registry = make_registry(make_store(clock, max_prefixes=64, max_total_tokens=10**7),
                             backend, max_prefix_tokens=10**6, max_ttl_s=10**6)
    service = DocumentService(settings=make_doc_settings(**overrides), registry=registry,
                              tokenizer=WordTokenizer(), embedder=BagOfWordsEmbedder(),
                              metrics=DocumentMetrics(metrics if metrics is not None
                                                      else CollectorRegistry()),
                              clock=clock)
    return service, backend, clock


TOPICS = ("harbour", "turbine", "glacier", "orchard", "lantern", "compass", "quarry",
          "meadow", "furnace", "beacon", "canyon", "violin")


def long_document(paragraphs: int = 12, sentences: int = 4) -> str:
    """Paragraph i is about TOPICS[i]; about 12 words per sentence."""
    out = []
    for i in range(paragraphs):
        topic = TOPICS[i % len(TOPICS)]
        out.append(" ".join(
            f"Paragraph {i} sentence {j} tells of the {topic} and its {topic} keeper today."
            for j in range(sentences)))
    return "\n\n".join(out)
