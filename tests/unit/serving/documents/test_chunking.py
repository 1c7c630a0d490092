"""chunk_document: paragraph-first windows, sentence fallback, overlap, exact spans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.documents.chunking import chunk_document
from tests.unit.serving.documents.document_fakes import count_words, long_document


def chunks_of(text: str, size: int, overlap: int):
    return chunk_document(text, chunk_tokens=size, overlap_tokens=overlap, count=count_words)


def test_small_paragraphs_pack_into_one_window_and_keep_the_original_text() -> None:
    text = "One two three.\n\nFour five six.\n\n\nSeven eight."
    (chunk,) = chunks_of(text, 20, 0)
    assert (chunk.index, chunk.start, chunk.end, chunk.tokens) == (0, 0, len(text), 8)


def test_windows_break_at_paragraphs_and_repeat_the_overlap() -> None:
    # Four paragraphs of 5 words; windows of 10 with 5 of overlap.
    paragraphs = [f"p{i} a b c d." for i in range(4)]
    text = "\n\n".join(paragraphs)
    chunks = chunks_of(text, 10, 5)
    assert [text[c.start:c.end] for c in chunks] == [
        "\n\n".join(paragraphs[0:2]), "\n\n".join(paragraphs[1:3]),
        "\n\n".join(paragraphs[2:4])]
    assert [c.tokens for c in chunks] == [10, 10, 10]


def test_a_long_paragraph_splits_at_sentences() -> None:
    text = "Alpha beta gamma. Delta epsilon zeta! Eta theta iota? Kappa lambda mu."
    chunks = chunks_of(text, 6, 0)
    assert [text[c.start:c.end] for c in chunks] == [
        "Alpha beta gamma. Delta epsilon zeta!", "Eta theta iota? Kappa lambda mu."]


def test_a_sentence_longer_than_the_window_is_cut_between_words() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunks_of(text, 10, 0)
    assert [c.tokens for c in chunks] == [10, 10, 5]
    assert " ".join(text[c.start:c.end] for c in chunks) == text


def test_blank_text_has_no_chunks_and_bad_windows_are_refused() -> None:
    assert chunks_of("  \n\n \t", 10, 2) == []
    with pytest.raises(ValueError):
        chunks_of("a b", 10, 10)


def test_chunks_are_deterministic_and_in_document_order() -> None:
    text = long_document()
    first, second = chunks_of(text, 40, 8), chunks_of(text, 40, 8)
    assert first == second
    assert [c.index for c in first] == list(range(len(first)))
    assert all(a.start < b.start and a.end < b.end for a, b in zip(first, first[1:]))


@settings(max_examples=60, deadline=None)
@given(paragraphs=st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=6),
                           min_size=1, max_size=12),
       size=st.integers(4, 60), overlap_share=st.floats(0, 0.9))
def test_every_word_is_covered_and_windows_respect_their_size(
        paragraphs: list[list[int]], size: int, overlap_share: float) -> None:
    # Sentences of n words; paragraphs of sentences.
    text = "\n\n".join(" ".join(" ".join(["w"] * n) + "." for n in para) for para in paragraphs)
    overlap = min(size - 1, int(size * overlap_share))
    chunks = chunks_of(text, size, overlap)
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
        assert c.tokens <= size  # words here never merge across a boundary
        # Starts and ends on a word boundary.
        assert text[c.start] != " " and (c.end == len(text) or not text[c.end - 1].isspace())
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    # Each window starts after the previous one: the slide always progresses.
    assert all(a.start < b.start for a, b in zip(chunks, chunks[1:]))
