"""Seeded long-document question answering: few documents, many questions each.

Model of the load: ``D`` long documents (about 2.4k SmolLM2 tokens each by
default: 19 KV blocks of 128), and ``requests`` questions. Each request's system
message is its whole document followed by one fixed instruction, and its user
message a short question, so every question about a document shares the
document's full prompt prefix and nothing else. Document popularity is Zipf(s)
over rank, as tenants are in ``workloads.py`` (document ``d00`` the most asked
about). A miss costs a long prefill, a hit almost nothing: the routing question
is whether each document stays on one replica, and whether the hot one is
spread when it overloads it.

Documents differ from their first word on (a distinct title word each), so no
two share a first block. Arrivals are Poisson at ``rate_rps`` (all at 0 without
a rate, for fixed-concurrency replay). Determinism as in ``workloads.py``; a
document's text depends only on ``seed`` and its index. Cost: O(documents x
words + requests).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench.trace import TraceRequest
from bench.workloads import (
    WORDS,
    arrival_times,
    company_name,
    numbered_text,
    zipf_weights,
)

_KINDS = ("annual report", "service manual", "audit memo", "supply contract", "safety study",
          "product guide", "market review", "policy handbook")
INSTRUCTION = "Answer the question using only the document above, in one sentence."
# About 2.4k SmolLM2 tokens per request (2,414-2,474 measured, seed 0) with the chat template.
DEFAULT_DOCUMENT_WORDS = 1600


@dataclass(frozen=True, kw_only=True)
class Document:
    name: str  # "d00": rank order, d00 the most popular
    title: str
    text: str


@dataclass(frozen=True, kw_only=True)
class DocumentSpec:
    documents: int = 6
    requests: int = 120
    zipf_s: float = 0.8
    seed: int = 0
    rate_rps: float | None = None
    document_words: int = DEFAULT_DOCUMENT_WORDS
    max_tokens: int = 8

    def __post_init__(self) -> None:
        for name in ("documents", "document_words", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.requests < 0:
            raise ValueError(f"requests must be >= 0, got {self.requests}")
        if self.zipf_s < 0:
            raise ValueError(f"zipf_s must be >= 0, got {self.zipf_s}")
        if self.rate_rps is not None and not self.rate_rps > 0:
            raise ValueError(f"rate_rps must be > 0, got {self.rate_rps}")


def make_documents(spec: DocumentSpec) -> list[Document]:
    documents: list[Document] = []
    taken: set[str] = set()
    for index in range(spec.documents):
        rng = random.Random(f"document:{spec.seed}:{index}")
        owner = company_name(rng)
        while owner.split()[0] in taken:  # distinct first word: distinct first block
            owner = company_name(rng)
        taken.add(owner.split()[0])
        title = f"{owner} {rng.choice(_KINDS)}"
        body = numbered_text(rng, spec.document_words, label="Section")
        documents.append(Document(name=f"d{index:02d}", title=title,
                                  text=f"{title}.\n\n{body}\n\n{INSTRUCTION}"))
    return documents


def question(rng: random.Random, number: int) -> str:
    return (f"Question {number}: what does section {rng.randint(1, 40)} say about the "
            f"{rng.choice(WORDS)} {rng.choice(WORDS)}?")


def generate(spec: DocumentSpec) -> list[TraceRequest]:
    """The questions, in arrival order."""
    documents = make_documents(spec)
    picks = random.Random(f"document-picks:{spec.seed}").choices(
        range(spec.documents), weights=zipf_weights(spec.documents, spec.zipf_s),
        k=spec.requests)
    questions = random.Random(f"document-questions:{spec.seed}")
    times = arrival_times(spec.requests, spec.rate_rps, spec.seed)
    return [TraceRequest(t=t, tenant=documents[d].name, max_tokens=spec.max_tokens,
                         messages=({"role": "system", "content": documents[d].text},
                                   {"role": "user", "content": question(questions, number)}))
            for number, (d, t) in enumerate(zip(picks, times))]


# Long documents (``bench.documents --document-windows``): passages on distinct topics,
# one topic per passage, so a question about one passage names words no other holds.
_TOPIC_COLOURS = ("amber", "cobalt", "crimson", "golden", "ivory", "jade", "scarlet",
                  "silver", "violet", "copper", "emerald", "indigo")
_TOPIC_THINGS = ("lighthouse", "orchard", "glacier", "turbine", "violin", "quarry",
                 "furnace", "canyon", "meadow", "compass", "lantern", "harbour")
# SmolLM2 tokens per word of ``numbered_text`` (DEFAULT_DOCUMENT_WORDS: about 1.5).
TOKENS_PER_WORD = 1.5
# SmolLM2 tokens per word of a long document's passages (plain words, few digits): the
# floor, so a document asked for N windows is at least N windows long.
PASSAGE_TOKENS_PER_WORD = 1.25
PASSAGE_WORDS = 120


@dataclass(frozen=True, kw_only=True)
class LongDocument:
    name: str
    title: str
    text: str
    topics: tuple[str, ...]  # passage i (paragraph i after the title) is about topics[i]


def make_long_documents(windows: Sequence[float], *, window_tokens: int,
                        seed: int = 0) -> list[LongDocument]:
    """One document per entry of ``windows``, about that many context windows long,
    in passages of about ``PASSAGE_WORDS`` words, each on its own topic."""
    out = []
    topics_all = [f"{c} {t}" for c in _TOPIC_COLOURS for t in _TOPIC_THINGS]
    for index, multiple in enumerate(windows):
        rng = random.Random(f"long-document:{seed}:{index}")
        topics = list(topics_all)
        rng.shuffle(topics)
        title = f"{company_name(rng)} {rng.choice(_KINDS)} ({multiple:g} windows)"
        words = multiple * window_tokens / PASSAGE_TOKENS_PER_WORD
        body: list[str] = []
        while not body or sum(len(p.split()) for p in body) < words:
            if len(body) == len(topics):
                raise ValueError(f"{multiple:g} windows of {window_tokens} tokens need more "
                                 f"passages than there are topics ({len(topics)})")
            body.append(numbered_text(rng, PASSAGE_WORDS, label=f"The {topics[len(body)]}, note"))
        out.append(LongDocument(name=f"L{index:02d}", title=title,
                                topics=tuple(topics[:len(body)]),
                                text="\n\n".join([f"{title}.", *body])))
    return out


def passage_questions(document: LongDocument, count: int, seed: int = 0
                      ) -> list[tuple[int, str]]:
    """``count`` (passage, question) pairs on passages spread evenly over the document,
    so consecutive questions land in different parts of it."""
    rng = random.Random(f"long-questions:{seed}:{document.name}")
    n = len(document.topics)
    picks = [min(n - 1, int((k + 0.5) * n / count)) for k in range(count)]
    return [(p, (f"What do the notes on the {document.topics[p]} say about the "
                 f"{rng.choice(WORDS)}?")) for p in picks]
