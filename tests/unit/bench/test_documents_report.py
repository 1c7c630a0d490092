"""bench/documents.py's aggregation, on fake answers and fake streamed responses in
both shapes of the ask's ``document`` object: with ``sections`` (sectioned documents)
and without (the lead-plus-excerpts service before them)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from bench.documents import (
    Session,
    answer_of,
    build_parser,
    command_line,
    read_stream,
    workload_name,
)
from bench.documents_grounding import covers, grounded, passage_spans
from bench.documents_qa import make_long_documents
from bench.documents_report import Answer, markdown_rows, rows
from bench.results import table


def fake(mode: str = "document", *, number: int = 1, prompt: int = 1000, cached: int = 0,
         ttft: float | None = 0.1, latency: float = 1.0, grounded: bool | None = None,
         windows: float | None = 4.0, sections: tuple[int, ...] = ()) -> Answer:
    return Answer(mode=mode, document=0, number=number, prompt_tokens=prompt,
                  cached_tokens=cached, assembly_ms=1.0, latency_s=latency, chunks=(),
                  sections=sections, windows=windows, passage=0, ttft_s=ttft,
                  grounded=grounded)


def test_rows_give_ttft_percentiles_per_mode_and_size() -> None:
    answers = [fake(ttft=t, latency=t * 10) for t in (0.5, 0.1, 0.4, 0.2, 0.3)]
    answers += [fake(ttft=None), fake("document", windows=8.0, ttft=2.0)]
    answers += [fake("naive", ttft=9.0)]
    by_key = {(r["mode"], r["windows"]): r for r in rows(answers)}
    four = by_key[("document", 4.0)]
    # The answer with no content token counts for the hit rate, not for TTFT.
    assert four["questions"] == 6
    assert (four["ttft_p50_s"], four["ttft_p99_s"]) == (0.3, 0.496)
    assert four["e2e_p50_s"] == 2.5
    assert by_key[("document", 8.0)]["ttft_p50_s"] == 2.0
    assert by_key[("naive", 4.0)]["ttft_p99_s"] == 9.0
    assert [(r["mode"], r["windows"]) for r in rows(answers)] == [
        ("document", 4.0), ("document", 8.0), ("naive", 4.0)]


def test_rows_without_any_ttft_report_none() -> None:
    (only,) = rows([fake(ttft=None)])
    assert only["ttft_p50_s"] is None and only["ttft_p99_s"] is None


def test_the_after_first_hit_rate_leaves_each_documents_first_question_out() -> None:
    answers = [fake(number=0, prompt=1000, cached=0), fake(number=1, prompt=1000, cached=800),
               fake(number=2, prompt=3000, cached=2700)]
    (r,) = rows(answers)
    assert r["hit_rate"] == round(3500 / 5000, 3)
    assert r["hit_rate_after_first"] == round(3500 / 4000, 3)
    (first_only,) = rows([fake(number=0, cached=500)])
    assert first_only["hit_rate"] == 0.5 and first_only["hit_rate_after_first"] is None


def test_grounding_is_a_share_of_the_known_answers_and_none_when_none_is_known() -> None:
    (r,) = rows([fake(grounded=True), fake(grounded=False), fake(grounded=True),
                 fake(grounded=None)])
    assert (r["grounded"], r["grounded_known"]) == (round(2 / 3, 3), 3)
    (unknown,) = rows([fake(grounded=None), fake(grounded=None)])
    assert (unknown["grounded"], unknown["grounded_known"]) == (None, 0)


def test_the_results_page_renders_the_rows_with_unknowns_as_dashes() -> None:
    answers = [fake(number=0, cached=0, grounded=True, sections=(2,)),
               fake(number=1, cached=900, grounded=True, sections=(3,)),
               fake("naive", cached=100, grounded=None)]
    page = table("documents", rows(answers))
    header, _, document, naive = page.splitlines()
    assert "hit rate after first" in header and "TTFT p99 s" in header
    assert document.startswith("| document | 4 | 2 | 45.0% | 90.0% | 0.100 | 0.100 |")
    assert document.endswith("| 100.0% | 2 |")
    assert naive.endswith("| - | 0 |")
    assert "| naive | 4 | 1 | 0.100 | 0.100 |" in markdown_rows(rows(answers))


def test_covers_needs_the_whole_passage_in_the_union_of_spans() -> None:
    assert covers([(0, 50), (40, 120)], (30, 110))  # overlapping chunks merge
    assert covers([(50, 100), (100, 200)], (60, 150))  # touching ones too
    assert not covers([(0, 50), (60, 120)], (30, 110))  # a gap
    assert not covers([(40, 120)], (30, 110))  # its head missing
    assert not covers([], (0, 1))


def test_grounding_reads_sections_when_the_response_has_them() -> None:
    meta = {"mode": "sections", "chunks": [], "lead_chunks": 0,
            "sections": [{"index": 1, "chunks": [4, 7], "chars": [1000, 2000],
                          "tokens": [300, 600]}]}
    assert grounded(meta, (1200, 1500), None) is True
    assert grounded(meta, (1900, 2100), None) is False
    assert grounded(meta, None, None) is None


def test_grounding_without_sections_places_the_lead_and_excerpt_chunks() -> None:
    spans = [(0, 100), (90, 200), (190, 300), (290, 400), (390, 500)]
    meta = {"mode": "excerpts", "lead_chunks": 1, "chunks": [3]}  # the old shape
    assert grounded(meta, (20, 80), spans) is True  # in the lead
    assert grounded(meta, (300, 380), spans) is True  # in an excerpt
    assert grounded(meta, (200, 280), spans) is False  # in neither
    assert grounded(meta, (200, 280), None) is None  # chunks not placed: unknown
    assert grounded({**meta, "chunks": [9]}, (20, 80), spans) is None  # out of range
    naive = {"mode": "excerpts", "lead_chunks": 0, "chunks": [2], "sections": []}
    assert grounded(naive, (200, 280), spans) is True
    assert grounded(naive, (20, 80), spans) is False
    assert grounded({"mode": "whole", "chunks": []}, (200, 280), None) is True


def test_passage_spans_are_the_passages_of_the_text() -> None:
    (doc,) = make_long_documents([2], window_tokens=2048, seed=0)
    spans = passage_spans(doc)
    assert len(spans) == len(doc.topics)
    for (start, end), topic in zip(spans, doc.topics):
        assert doc.text[start:end].startswith(f"The {topic}, note 1:")
        assert doc.text[end:end + 2] in ("\n\n", "")


def sse(*events: dict) -> list[str]:
    lines = []
    for event in events:
        lines += [f"data: {json.dumps(event)}", ""]
    return [*lines, "data: [DONE]", ""]


def chunk(content: str, **extra: object) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta":
                                                            {"content": content}}], **extra}


USAGE = {"choices": [], "usage": {"prompt_tokens": 900, "completion_tokens": 8,
                                  "prompt_tokens_details": {"cached_tokens": 768}}}


def test_a_stream_gives_the_document_the_first_content_time_and_the_usage() -> None:
    times = iter([1.4, 1.6, 2.0])
    meta = {"mode": "excerpts", "lead_chunks": 2, "chunks": [5]}
    lines = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                 "document": meta}, chunk("The"), chunk(" lamp"), USAGE)
    got = read_stream(lines, started=1.0, clock=lambda: next(times))
    assert got.document == meta
    assert (got.prompt_tokens, got.cached_tokens) == (900, 768)
    assert got.ttft_s == pytest.approx(0.4) and got.latency_s == pytest.approx(0.6)


def test_a_stream_without_content_has_no_ttft_and_one_without_usage_fails() -> None:
    got = read_stream(sse(chunk("", document={"mode": "whole"}), USAGE), started=0.0,
                      clock=lambda: 3.0)
    assert got.ttft_s is None and got.latency_s == 3.0
    with pytest.raises(RuntimeError, match="without usage"):
        read_stream(sse(chunk("x", document={})), started=0.0, clock=lambda: 1.0)


@pytest.mark.parametrize("with_sections", [True, False])
def test_an_answer_is_grounded_from_either_response_shape(with_sections: bool) -> None:
    (doc,) = make_long_documents([2], window_tokens=2048, seed=0)
    spans = passage_spans(doc)
    passage = 3
    if with_sections:
        meta = {"mode": "sections", "lead_chunks": 0, "chunks": [], "assembly_ms": 2.0,
                "sections": [{"index": 1, "chunks": [2, 4],
                              "chars": [spans[2][0], spans[4][1]], "tokens": [0, 1]}]}
        chunk_spans = None
    else:  # one chunk per passage, the title its own
        meta = {"mode": "excerpts", "lead_chunks": 1, "chunks": [4], "assembly_ms": 2.0}
        chunk_spans = [(0, spans[0][0] - 2), *spans]
    session = Session(doc_id="doc", questions=["q0", "q1"], windows=2.0,
                      passages=[0, passage], passage_spans=spans, chunk_spans=chunk_spans)
    lines = sse(chunk("A", document=meta), USAGE)
    reply = read_stream(lines, started=0.0, clock=lambda: 1.0)
    a = answer_of("document", 0, 1, session, reply)
    assert (a.passage, a.windows, a.number, a.assembly_ms) == (passage, 2.0, 1, 2.0)
    assert a.grounded is True
    assert a.sections == ((1,) if with_sections else ())
    missed = answer_of("document", 0, 0, session, reply)  # passage 0: in no span used
    assert missed.grounded is False
    unplaced = Session(doc_id="doc", questions=["q"], windows=2.0, passages=[passage],
                       passage_spans=spans, chunk_spans=None)
    assert answer_of("document", 0, 0, unplaced, reply).grounded is (
        True if with_sections else None)


def test_the_command_hides_the_key_and_the_workload_names_the_sizes() -> None:
    argv = ["--document-windows", "2,4,8", "--api-key", "s3cret", "--url", "http://h:8000"]
    assert "s3cret" not in command_line(argv)
    assert command_line(argv).startswith("python -m bench.documents --document-windows 2,4,8")
    assert "s3cret" not in command_line(["--api-key=s3cret"])
    assert workload_name(build_parser().parse_args(argv)) == "long-2x-4x-8x"
    assert workload_name(build_parser().parse_args([])) == "3x1600-words"
    labelled = build_parser().parse_args([*argv, "--label", "lead-excerpts"])
    assert workload_name(labelled) == "long-2x-4x-8x-lead-excerpts"


def words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_chunks_are_placed_only_when_their_count_matches_the_services() -> None:
    from bench.documents_grounding import chunk_spans

    (doc,) = make_long_documents([2], window_tokens=2048, seed=0)
    spans = chunk_spans(doc.text, count=words, chunk_tokens=200, overlap_tokens=32,
                        expected_chunks=0)
    assert spans is None  # another tokenizer or chunk size: unknown, not guessed
    from serving.documents.chunking import chunk_document

    n = len(chunk_document(doc.text, chunk_tokens=200, overlap_tokens=32, count=words))
    placed = chunk_spans(doc.text, count=words, chunk_tokens=200, overlap_tokens=32,
                         expected_chunks=n)
    assert placed is not None and len(placed) == n
    assert placed[0][0] == 0 and placed[-1][1] == len(doc.text)
    # Every passage is whole in the union of the chunks (they cover the text).
    for start, end in passage_spans(doc):
        assert covers(placed, (start, end))
