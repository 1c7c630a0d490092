"""Context assembly: whole document when it fits, else lead + excerpts in document
order; the naive similarity order; rendering merges adjacent chunks."""

from __future__ import annotations

from serving.documents import assembly
from serving.documents.assembly import GAP, Mode, Order
from serving.documents.chunking import Chunk, chunk_document
from tests.unit.serving.documents.document_fakes import count_words, long_document


def make_chunks(sizes: list[int]) -> list[Chunk]:
    out, pos = [], 0
    for i, size in enumerate(sizes):
        out.append(Chunk(index=i, start=pos, end=pos + size, tokens=size))
        pos += size
    return out


def test_the_whole_document_is_used_when_it_fits() -> None:
    chunks = make_chunks([10] * 6)
    sel = assembly.select(chunks=chunks, ranked=[5, 4, 3, 2, 1, 0], document_tokens=60,
                          lead_count=1, lead_tokens=10, budget_tokens=60, top_k=2)
    assert (sel.mode, sel.excerpts, sel.tokens) == (Mode.WHOLE, (), 60)


def test_excerpts_follow_the_lead_in_document_order_within_budget_and_top_k() -> None:
    chunks = make_chunks([10, 10, 30, 10, 10, 10])
    sel = assembly.select(chunks=chunks, ranked=[5, 2, 0, 3, 1, 4], document_tokens=80,
                          lead_count=1, lead_tokens=10, budget_tokens=40, top_k=3)
    # 5 fits (20), 2 does not (50 > 40), 0 is the lead, 3 fits (30), 1 fits (40): top_k.
    assert (sel.mode, sel.excerpts, sel.tokens) == (Mode.EXCERPTS, (1, 3, 5), 40)


def test_related_questions_share_a_longer_prefix_in_document_order() -> None:
    chunks = make_chunks([10] * 8)
    common = dict(chunks=chunks, document_tokens=80, lead_count=1, lead_tokens=10,
                  budget_tokens=50, top_k=3)
    # Two questions with the same top chunks ranked differently.
    q1 = assembly.select(ranked=[6, 2, 4, 7], **common)
    q2 = assembly.select(ranked=[2, 4, 6, 1], **common)
    assert q1.excerpts == q2.excerpts == (2, 4, 6)
    n1 = assembly.select(ranked=[6, 2, 4, 7], order=Order.SIMILARITY, **common)
    n2 = assembly.select(ranked=[2, 4, 6, 1], order=Order.SIMILARITY, **common)
    assert n1.excerpts[0] != n2.excerpts[0]
    assert n1.mode is Mode.EXCERPTS  # the naive path never sends the whole document


def test_never_whole_when_document_tokens_are_infinite() -> None:
    chunks = make_chunks([10] * 3)
    sel = assembly.select(chunks=chunks, ranked=[2, 1, 0], document_tokens=float("inf"),
                          lead_count=1, lead_tokens=10, budget_tokens=1000, top_k=5)
    assert (sel.mode, sel.excerpts) == (Mode.EXCERPTS, (1, 2))


def test_lead_is_at_least_one_chunk_then_what_fits() -> None:
    assert assembly.lead_chunks(make_chunks([50, 10]), 20) == 1
    assert assembly.lead_chunks(make_chunks([10, 10, 10]), 25) == 2
    assert assembly.lead_chunks([], 25) == 0


def test_rendering_merges_overlap_and_neighbours_and_marks_gaps() -> None:
    text = "\n\n".join(f"Para {i} " + " ".join(["x"] * 8) + "." for i in range(10))
    chunks = chunk_document(text, chunk_tokens=20, overlap_tokens=10, count=count_words)
    assert len(chunks) >= 6
    sel = assembly.Selection(mode=Mode.EXCERPTS, order=Order.DOCUMENT,
                             excerpts=(2, 3, 5), tokens=0)
    msgs = assembly.messages(name="report", text=text, chunks=chunks, lead_count=1,
                             selection=sel, question="What is in para 4?")
    system, user = msgs
    assert system["content"].startswith(assembly.INSTRUCTION)
    assert system["content"].endswith(text[:chunks[0].end])
    body = user["content"]
    assert body.startswith(assembly.EXCERPTS_HEADING) and body.endswith("Question: What is in para 4?")
    merged = text[max(chunks[2].start, chunks[0].end):chunks[3].end].strip()
    assert merged in body  # 2 and 3 overlap: one passage, the overlap not repeated
    assert body.count(GAP) == 1
    assert body.count("Para 3 ") == 1


def test_whole_mode_puts_the_document_in_the_system_message_and_is_deterministic() -> None:
    text = long_document(paragraphs=3)
    chunks = chunk_document(text, chunk_tokens=40, overlap_tokens=8, count=count_words)
    sel = assembly.Selection(mode=Mode.WHOLE, order=Order.DOCUMENT, excerpts=(), tokens=0)
    kwargs = dict(name="n", text=text, chunks=chunks, lead_count=1, selection=sel,
                  question="Why?")
    msgs = assembly.messages(**kwargs)
    assert msgs == assembly.messages(**kwargs)
    assert msgs[0]["content"].endswith(text) and msgs[1]["content"] == "Question: Why?"


def test_similarity_order_has_no_anchor_and_keeps_rank_order() -> None:
    text = long_document(paragraphs=6)
    chunks = chunk_document(text, chunk_tokens=40, overlap_tokens=0, count=count_words)
    sel = assembly.Selection(mode=Mode.EXCERPTS, order=Order.SIMILARITY,
                             excerpts=(4, 1), tokens=0)
    system, user = assembly.messages(name="n", text=text, chunks=chunks, lead_count=1,
                                     selection=sel, question="Q?")
    assert system["content"] == assembly.NAIVE_INSTRUCTION
    body = user["content"]
    assert body.index(text[chunks[4].start:chunks[4].end]) < body.index(
        text[chunks[1].start:chunks[1].end])
