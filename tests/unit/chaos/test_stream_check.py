"""Broken-stream detection on fake SSE bodies."""

from __future__ import annotations

from chaos.stream_check import StreamChecker, check_lines
from tests.unit.chaos.chaos_fakes import chat_chunk, sse


def verdict_of(body: str):
    return check_lines(body.splitlines())


def test_whole_stream_is_ok_and_keeps_text_and_usage() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 2,
             "prompt_tokens_details": {"cached_tokens": 4}}
    v = verdict_of(sse(chat_chunk("Hel"), chat_chunk("lo"), chat_chunk("", usage=usage)))
    assert v.ok and v.reason is None
    assert v.text == "Hello"
    assert v.usage == usage
    assert v.chunks == 3
    assert v.stream_id == "chatcmpl-1"


def test_completion_chunks_use_text() -> None:
    chunk = {"id": "cmpl-1", "choices": [{"index": 0, "text": "abc"}]}
    v = verdict_of(sse(chunk, chunk))
    assert v.ok and v.text == "abcabc"


def test_stream_without_done_is_broken() -> None:
    v = verdict_of(sse(chat_chunk("a"), chat_chunk("b"), done=False))
    assert not v.ok and v.reason == "no_done"
    assert "2 chunk(s)" in (v.detail or "")


def test_empty_body_is_broken() -> None:
    assert verdict_of("").reason == "no_done"


def test_error_event_is_broken_even_with_done() -> None:
    v = verdict_of(sse(chat_chunk("a"), {"error": {"message": "engine died", "code": 500}}))
    assert v.reason == "error" and v.detail == "engine died"


def test_ids_changing_midway_are_broken() -> None:
    v = verdict_of(sse(chat_chunk("a", chunk_id="x"), chat_chunk("b", chunk_id="y")))
    assert v.reason == "inconsistent_ids" and v.detail == "x then y"


def test_data_after_done_is_broken() -> None:
    body = sse(chat_chunk("a")) + "data: " + '{"id": "chatcmpl-1", "choices": []}' + "\n\n"
    assert verdict_of(body).reason == "after_done"


def test_invalid_json_is_broken() -> None:
    assert verdict_of(sse("{not json")).reason == "error"


def test_first_problem_is_reported() -> None:
    v = verdict_of(sse(chat_chunk("a", chunk_id="x"), chat_chunk("b", chunk_id="y"),
                       {"error": "later"}, done=False))
    assert v.reason == "inconsistent_ids"


def test_transport_error_mid_stream() -> None:
    checker = StreamChecker()
    checker.line('data: {"id": "a", "choices": []}')
    checker.transport_error(ConnectionResetError("peer reset"))
    v = checker.verdict()
    assert v.reason == "transport" and "peer reset" in (v.detail or "")


def test_comments_and_blank_lines_are_ignored() -> None:
    lines = [": keep-alive", "", "event: message", *sse(chat_chunk("a")).splitlines()]
    assert check_lines(lines).ok
