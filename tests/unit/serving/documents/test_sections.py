"""Sections: cutting (boundaries, fit, overlap), ranking and leg choice, trimming, and
the key property -- a question's rendered prompt starts with exactly its section's
prewarmed anchor tokens -- with the tiny model's real tokenizer and chat template."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from serving.documents import sections
from serving.documents.assembly import Mode
from serving.documents.chunking import Chunk, chunk_document
from serving.documents.metrics import DocumentMetrics
from serving.documents.sections import Section, SectionError
from serving.documents.service import DocumentService
from serving.routing.prompt_tokens import PromptTokenizer
from tests.tiny_model import build_tiny_model
from tests.unit.serving.documents.document_fakes import (
    BagOfWordsEmbedder,
    count_words,
    long_document,
    make_doc_settings,
)
from tests.unit.serving.prefixes.prefix_fakes import (
    MODEL,
    OWNER,
    Clock,
    FakeBackend,
    make_registry,
    make_store,
)


def chunks_of(text: str, *, chunk: int = 40, overlap: int = 16) -> list[Chunk]:
    return chunk_document(text, chunk_tokens=chunk, overlap_tokens=overlap, count=count_words)


def test_sections_are_runs_of_chunks_that_fit_and_share_their_boundary_chunk() -> None:
    text = long_document(paragraphs=12)
    chunks = chunks_of(text)
    fresh = sections.fresh_tokens(text, chunks, count_words)
    cut = sections.cut(chunks, fresh, budget_tokens=150)
    assert len(cut) >= 3
    # In order, from the first chunk to the last; each section opens with the one
    # before's last chunk, so every two adjacent chunks lie whole in one section.
    assert cut[0].first_chunk == 0 and cut[-1].last_chunk == len(chunks) - 1
    for before, after in pairwise(cut):
        assert after.first_chunk == before.last_chunk < after.last_chunk
    for i in range(len(chunks) - 1):
        assert any(s.first_chunk <= i and i + 1 <= s.last_chunk for s in cut)
    for section in cut:
        body = sections.section_text(text, chunks, section)
        # Fits (the estimate is exact for the word counter), and greedy: one more
        # chunk would not have fit.
        assert len(body.split()) == section.estimated_tokens <= 150
        if section.last_chunk + 1 < len(chunks):
            assert section.estimated_tokens + fresh[section.last_chunk + 1] > 150
        # Boundaries on chunk (sentence) boundaries.
        assert body.startswith("Paragraph") and body.endswith(".")
    for before, after in pairwise(cut):
        shared = sections.section_text(text, chunks, Section(
            index=0, first_chunk=after.first_chunk, last_chunk=after.first_chunk,
            estimated_tokens=0))
        assert sections.section_text(text, chunks, before).endswith(shared)
        assert sections.section_text(text, chunks, after).startswith(shared)


def test_a_shared_chunk_that_leaves_no_room_starts_the_next_section_after_it() -> None:
    chunks = [Chunk(index=i, start=10 * i, end=10 * i + 10, tokens=t)
              for i, t in enumerate((30, 30, 40, 40))]
    # Chunk 1 then 2 fill a section (70 of 70), so a section opening with the shared
    # chunk 2 has no room for 3: the next starts at 3 instead of repeating 2 alone.
    cut = sections.cut(chunks, [30, 30, 40, 40], budget_tokens=70)
    assert [(s.first_chunk, s.last_chunk) for s in cut] == [(0, 1), (1, 2), (3, 3)]
    # One chunk per section: nothing to share, each section is the next chunk.
    cut = sections.cut(chunks, [30, 30, 40, 40], budget_tokens=40)
    assert [(s.first_chunk, s.last_chunk) for s in cut] == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_token_spans_cover_the_document_with_the_shared_chunks() -> None:
    text = long_document(paragraphs=12)
    chunks = chunks_of(text)
    fresh = sections.fresh_tokens(text, chunks, count_words)
    cut = sections.cut(chunks, fresh, budget_tokens=150)
    spans = sections.token_spans(cut, chunks, fresh)
    assert spans[0][0] == 0 and spans[-1][1] == len(text.split())
    for (a, b), section in zip(spans, cut):
        assert b - a == section.estimated_tokens
    for ((_, end), (start, _)), after in zip(pairwise(spans), cut[1:]):
        assert end - start == chunks[after.first_chunk].tokens  # the shared chunk


def test_a_chunk_larger_than_a_section_is_refused() -> None:
    chunks = [Chunk(index=0, start=0, end=10, tokens=10), Chunk(index=1, start=10, end=90,
                                                                tokens=80)]
    with pytest.raises(SectionError):
        sections.cut(chunks, [10, 80], budget_tokens=50)
    assert sections.cut([], [], budget_tokens=50) == []


def test_sections_score_their_best_chunk_and_close_seconds_join_as_legs() -> None:
    cut = [Section(index=0, first_chunk=0, last_chunk=2, estimated_tokens=0),
           Section(index=1, first_chunk=3, last_chunk=4, estimated_tokens=0),
           Section(index=2, first_chunk=5, last_chunk=6, estimated_tokens=0)]
    similarities = [0.1, 0.2, 0.1, 0.9, 0.0, 0.86, 0.86]
    assert sections.scores(similarities, cut) == pytest.approx([0.2, 0.9, 0.86])  # the max
    assert sections.pick_legs(similarities, cut, max_legs=3, margin=0.0) == (1,)
    # Within 0.05: chunks 3, 5 and 6. Section 2 holds two of them, so it goes first.
    assert sections.pick_legs(similarities, cut, max_legs=3, margin=0.05) == (2, 1)
    assert sections.pick_legs(similarities, cut, max_legs=3, margin=1.0) == (0, 1, 2)
    assert sections.pick_legs(similarities, cut, max_legs=1, margin=0.05) == (2,)
    pair = [Section(index=i, first_chunk=i, last_chunk=i, estimated_tokens=0) for i in (0, 1)]
    assert sections.pick_legs([0.5, 0.5], pair, max_legs=1, margin=0.0) == (0,)  # ties: order
    assert sections.pick_legs([], [], max_legs=2, margin=0.1) == ()


def test_top_chunks_held_by_one_section_make_one_leg() -> None:
    # Sections sharing their boundary chunk 2: the passage over chunks 2 and 3 is whole
    # in section 1 alone, which holds both top chunks, so one leg answers.
    cut = [Section(index=0, first_chunk=0, last_chunk=2, estimated_tokens=0),
           Section(index=1, first_chunk=2, last_chunk=4, estimated_tokens=0)]
    similarities = [0.1, 0.2, 0.8, 0.79, 0.3]
    assert sections.pick_legs(similarities, cut, max_legs=3, margin=0.03) == (1,)
    # The best chunk alone is shared: the higher-scoring holder (a tie: the first).
    assert sections.pick_legs([0.1, 0.2, 0.8, 0.3, 0.3], cut, max_legs=3,
                              margin=0.03) == (0,)


def test_trimming_drops_tail_chunks_never_the_first() -> None:
    section = Section(index=0, first_chunk=2, last_chunk=6, estimated_tokens=0)
    fresh = [9, 9, 9, 10, 10, 10, 10]
    assert sections.trim(fresh, section, 6, 15) == 4
    assert sections.trim(fresh, section, 6, 1) == 5
    assert sections.trim(fresh, section, 6, 1000) == 2


class TinyBackend(FakeBackend):
    """The fake stack, tokenising an anchor as the serving backend does: the real
    chat template, no generation prompt."""

    def __init__(self, prompts: PromptTokenizer) -> None:
        super().__init__()
        self.prompts = prompts

    async def token_ids(self, messages: Sequence[Mapping[str, Any]],
                        salt: str | None) -> tuple[int, ...]:
        self.tokenized += 1
        request = SimpleNamespace(messages=list(messages), add_generation_prompt=False,
                                  cache_salt=salt)
        return tuple(self.prompts.token_ids(request) or ())


class TinyTokenizer:
    def __init__(self, prompts: PromptTokenizer) -> None:
        self.prompts = prompts

    def count(self, texts: Sequence[str]) -> list[int]:
        encoded = self.prompts.tokenizer(list(texts), add_special_tokens=False)
        return [len(ids) for ids in encoded["input_ids"]] if texts else []

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], salt: str) -> int:
        request = SimpleNamespace(messages=list(messages), add_generation_prompt=False,
                                  cache_salt=salt)
        return len(self.prompts.token_ids(request) or ())


def test_a_questions_prompt_starts_with_exactly_its_sections_anchor_tokens(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    prompts = PromptTokenizer(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")))
    backend = TinyBackend(prompts)
    clock = Clock()
    registry = make_registry(make_store(clock, max_prefixes=64, max_total_tokens=10**7),
                             backend, max_prefix_tokens=10**6, max_ttl_s=10**6)
    service = DocumentService(
        settings=make_doc_settings(max_model_len=1024, chunk_tokens=96, chunk_overlap_tokens=24,
                                   answer_reserve_tokens=160),
        registry=registry, tokenizer=TinyTokenizer(prompts), embedder=BagOfWordsEmbedder(),
        metrics=DocumentMetrics(CollectorRegistry()), clock=clock)

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL,
                                      text=long_document(paragraphs=24), name="manual")
        assert doc.anchor_mode is Mode.SECTIONS and len(doc.sections) >= 2
        # Every anchor ends on a KV block boundary (padded), so a question's cached
        # prefix is all of its anchor: no partial block prefilled again per question.
        block = registry.settings.block_size
        for anchor in doc.sections:
            assert len(anchor.token_ids) % block == 0 and anchor.cacheable_tokens == len(
                anchor.token_ids) <= 1024 - 160
        history = [{"role": "user", "content": "And the keeper?"},
                   {"role": "assistant", "content": "Busy."}]
        for topic, turns in (("harbour", []), ("violin", []), ("canyon", history)):
            plan = await service.plan(doc.id, owner=OWNER.name,
                                      question=f"Tell me about the {topic}.", max_tokens=16,
                                      history=turns)
            for leg in plan.legs:
                anchor = doc.sections[leg.section]
                assert leg.last_chunk == anchor.section.last_chunk  # not trimmed
                # As the engine renders the question: with the generation prompt.
                prompt = prompts.token_ids(SimpleNamespace(messages=leg.messages,
                                                           cache_salt=doc.salt))
                assert prompt[:len(anchor.token_ids)] == anchor.token_ids
                assert len(prompt) + 16 <= 1024
                # Every full block of the anchor is one the router owns for it.
                assert service.anchors.placement(anchor.token_ids, doc.salt)[1]

    asyncio.run(body())
