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
