"""bench/documents.py: the summary of each mode and its questions (the live part is
run by hand against a service, docs/benchmarks/README.md)."""

from __future__ import annotations

import math

from bench.documents import Answer, build_parser, markdown, questions_for, summarise


def answer(mode: str, prompt: int, cached: int, assembly_ms: float, latency_s: float) -> Answer:
    return Answer(mode=mode, document=0, number=0, prompt_tokens=prompt, cached_tokens=cached,
                  assembly_ms=assembly_ms, latency_s=latency_s, chunks=(1, 2))


def test_summary_weighs_the_hit_rate_by_tokens() -> None:
    answers = [answer("document", 1000, 900, 10.0, 1.0), answer("document", 3000, 1500, 30.0,
                                                                 3.0)]
    s = summarise("document", answers, wall_s=4.04)
    assert (s.questions, s.prompt_tokens, s.cached_tokens, s.hit_rate) == (2, 4000, 2400, 0.6)
    assert (s.assembly_p50_ms, s.latency_p95_s, s.latency_mean_s, s.wall_s) == (
        20.0, 2.9, 2.0, 4.0)
    empty = summarise("naive", [], wall_s=0)
    assert empty.hit_rate == 0.0 and math.isnan(empty.latency_p50_s)
    table = markdown([s])
    assert "| document | 2 | 0.600 | 2,400 / 4,000 |" in table


def test_questions_are_seeded_and_the_defaults_exceed_a_2k_window() -> None:
    assert questions_for(3, 4, 0) == questions_for(3, 4, 0)
    assert questions_for(3, 4, 0) != questions_for(3, 4, 1)
    assert [len(q) for q in questions_for(3, 4, 0)] == [4, 4, 4]
    args = build_parser().parse_args([])
    assert (args.sessions, args.questions, args.document_words) == (3, 6, 1600)


def test_long_documents_span_their_windows_in_distinct_passages() -> None:
    from bench.documents_qa import (PASSAGE_TOKENS_PER_WORD, make_long_documents,
                                     passage_questions)

    docs = make_long_documents([2, 8], window_tokens=2048, seed=0)
    assert docs == make_long_documents([2, 8], window_tokens=2048, seed=0)
    for doc, windows in zip(docs, (2, 8)):
        title, *passages = doc.text.split("\n\n")
        assert len(passages) == len(doc.topics) == len(set(doc.topics))
        words = sum(len(p.split()) for p in passages)
        assert windows * 2048 / PASSAGE_TOKENS_PER_WORD <= words
        assert words - len(passages[-1].split()) < windows * 2048 / PASSAGE_TOKENS_PER_WORD
        for passage, topic in zip(passages, doc.topics):
            assert passage.startswith(f"The {topic}, note 1:")
        asked = passage_questions(doc, 4, seed=0)
        picks = [p for p, _ in asked]
        assert picks == sorted(set(picks)) and len(picks) == 4  # distinct, spread in order
        assert picks[0] < len(passages) // 4 and picks[-1] >= 3 * len(passages) // 4
        for p, text in asked:
            assert doc.topics[p] in text


def test_the_long_document_arguments_build_one_session_per_size() -> None:
    from bench.documents import workload

    args = build_parser().parse_args(["--document-windows", "2,4.5", "--questions", "3"])
    docs, questions, passages = workload(args)
    assert args.document_windows == [2.0, 4.5] and len(docs) == 2
    assert [len(q) for q in questions] == [3, 3] and passages is not None
    assert all(doc.topics[p] in q for doc, qs, ps in zip(docs, questions, passages)
               for q, p in zip(qs, ps))
    _, _, none = workload(build_parser().parse_args([]))
    assert none is None


def test_rows_report_each_mode_and_size_with_single_section_answers() -> None:
    from bench.documents_report import markdown_rows, rows

    def sized(mode: str, windows: float, cached: int, sections: tuple[int, ...]) -> Answer:
        return Answer(mode=mode, document=0, number=0, prompt_tokens=1000,
                      cached_tokens=cached, assembly_ms=1.0, latency_s=1.0, chunks=(),
                      sections=sections, windows=windows, passage=0)

    table = markdown_rows(rows([sized("document", 2, 900, (1,)),
                                sized("document", 2, 700, (0, 1)),
                                sized("document", 8, 950, (5,)), sized("naive", 2, 100, ())]))
    assert "| document | 2 | 2 | 0.800 | - | - | - | 1.000 | - | 1 |" in table
    assert "| document | 8 | 1 | 0.950 | - | - | - | 1.000 | - | 1 |" in table
    assert "| naive | 2 | 1 | 0.100 | - | - | - | 1.000 | - | 0 |" in table
