"""bench.chat_sessions and bench.documents_qa: deterministic, and shaped as described."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import pytest

from bench import chat_sessions, documents_qa
from bench.trace import TraceRequest, dumps_trace


def make_sessions(**overrides: object) -> chat_sessions.SessionSpec:
    fields: dict[str, object] = {"sessions": 5, "turns": 4, "seed": 3, "rate_rps": 2.0,
                                 "think_s": 4.0, "system_prompt_words": 40, "user_words": 6,
                                 "reply_words": 20}
    fields.update(overrides)
    return chat_sessions.SessionSpec(**fields)  # type: ignore[arg-type]


def make_documents(**overrides: object) -> documents_qa.DocumentSpec:
    fields: dict[str, object] = {"documents": 4, "requests": 60, "seed": 3, "rate_rps": 2.0,
                                 "document_words": 80}
    fields.update(overrides)
    return documents_qa.DocumentSpec(**fields)  # type: ignore[arg-type]


def by_session(trace: list[TraceRequest]) -> dict[str, list[TraceRequest]]:
    out: dict[str, list[TraceRequest]] = defaultdict(list)
    for r in trace:
        assert r.session is not None
        out[r.session].append(r)
    return out


# --- sessions ---------------------------------------------------------------------


def test_sessions_are_deterministic_and_seeded() -> None:
    assert dumps_trace(chat_sessions.generate(make_sessions())) == dumps_trace(
        chat_sessions.generate(make_sessions()))
    assert chat_sessions.generate(make_sessions(seed=3)) != chat_sessions.generate(
        make_sessions(seed=4))


def test_every_turn_of_every_session_in_arrival_order() -> None:
    trace = chat_sessions.generate(make_sessions())
    assert len(trace) == 5 * 4
    assert [r.t for r in trace] == sorted(r.t for r in trace)
    sessions = by_session(trace)
    assert len(sessions) == 5 and all(len(turns) == 4 for turns in sessions.values())


def test_a_turns_prompt_and_reply_are_a_prefix_of_the_next_turn() -> None:
    for turns in by_session(chat_sessions.generate(make_sessions())).values():
        for turn, (this, following) in enumerate(pairwise(turns)):
            assert this.messages is not None and following.messages is not None
            assert following.messages[:len(this.messages)] == this.messages
            # Exactly one synthetic assistant reply and one new user message added.
            added = following.messages[len(this.messages):]
            assert [m["role"] for m in added] == ["assistant", "user"]
            assert len(this.messages) == 2 + 2 * turn
            assert following.t - this.t >= 0.5 * 4.0 - 1e-6


def test_sessions_share_only_the_system_prompt() -> None:
    firsts = [turns[0].messages for turns in by_session(
        chat_sessions.generate(make_sessions())).values()]
    assert len({m[0]["content"] for m in firsts if m}) == 1
    assert len({m[1]["content"] for m in firsts if m}) == 5


def test_sessions_without_rate_still_order_turns() -> None:
    for turns in by_session(chat_sessions.generate(make_sessions(rate_rps=None))).values():
        assert [len(t.messages or ()) for t in turns] == [2, 4, 6, 8]


def test_sessions_reject_bad_specs() -> None:
    with pytest.raises(ValueError, match="turns"):
        make_sessions(turns=0)
    with pytest.raises(ValueError, match="rate_rps"):
        make_sessions(rate_rps=0.0)


# --- documents --------------------------------------------------------------------


def test_documents_are_deterministic_and_seeded() -> None:
    assert dumps_trace(documents_qa.generate(make_documents())) == dumps_trace(
        documents_qa.generate(make_documents()))
    assert documents_qa.generate(make_documents(seed=3)) != documents_qa.generate(
        make_documents(seed=4))


def test_questions_share_their_documents_prefix_and_nothing_else() -> None:
    trace = documents_qa.generate(make_documents())
    assert len(trace) == 60
    by_doc: dict[str | None, set[str]] = defaultdict(set)
    questions = set()
    for r in trace:
        assert r.messages is not None and [m["role"] for m in r.messages] == ["system", "user"]
        by_doc[r.tenant].add(r.messages[0]["content"])
        questions.add(r.messages[1]["content"])
    assert all(len(texts) == 1 for texts in by_doc.values())  # one document text each
    assert len(questions) == 60  # every question distinct
    texts = [next(iter(t)) for t in by_doc.values()]
    assert len({t.split()[0] for t in texts}) == len(texts)  # distinct from the first word


def test_document_popularity_follows_rank() -> None:
    trace = documents_qa.generate(make_documents(requests=2000, zipf_s=1.0))
    counts = [sum(r.tenant == f"d{i:02d}" for r in trace) for i in range(4)]
    # Zipf(1) over 4: expected 960, 480, 320, 240; 4+ standard deviations apart.
    assert counts[0] > counts[1] > counts[3]


def test_documents_do_not_depend_on_request_count() -> None:
    assert documents_qa.make_documents(make_documents(requests=5)) == (
        documents_qa.make_documents(make_documents(requests=500)))
