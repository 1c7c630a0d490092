"""Continuing a broken stream: the continuation request and the rewritten chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
)

from serving.failover.stream_resume import DONE_EVENT, StreamBroken, StreamResume, resume_blocker


def make_chat(**fields: Any) -> ChatCompletionRequest:
    base: dict[str, Any] = {"model": "m", "stream": True, "max_completion_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest(**{**base, **fields})


def make_completion(**fields: Any) -> CompletionRequest:
    base: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 10, "prompt": "Once"}
    return CompletionRequest(**{**base, **fields})


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def chat_chunk(content: str | None, *, tokens: int, id_: str = "c1", created: int = 1,
               role: str | None = None, finish: str | None = None,
               prompt_tokens: int = 5) -> str:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return sse({"id": id_, "object": "chat.completion.chunk", "created": created, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}})


def text_chunk(text: str, *, tokens: int, id_: str = "t1", finish: str | None = None,
               prompt_tokens: int = 3) -> str:
    return sse({"id": id_, "object": "text_completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}})


def usage_chunk(*, tokens: int, id_: str, prompt_tokens: int, obj: str) -> str:
    return sse({"id": id_, "object": obj, "created": 9, "model": "m", "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}})


ERROR = sse({"error": {"message": "EngineCore encountered an issue.",
                       "type": "InternalServerError", "param": None, "code": 500}})


def payloads(events: list[str]) -> list[Any]:
    out = []
    for event in events:
        body = event.removeprefix("data: ").strip()
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def test_upstream_asks_for_per_chunk_usage_and_the_client_does_not_see_it() -> None:
    state = StreamResume(make_chat(), "chat")
    upstream = state.upstream_body()
    assert upstream.stream_options.include_usage and upstream.stream_options.continuous_usage_stats
    out = payloads(state.consume([chat_chunk("", role="assistant", tokens=0),
                                  chat_chunk("Hel", tokens=1)]))
    assert all("usage" not in c for c in out)
    assert state.text == "Hel" and state.sent_tokens == 1 and state.started


def test_chat_continuation_request() -> None:
    state = StreamResume(make_chat(min_tokens=4), "chat")
    state.consume([chat_chunk("", role="assistant", tokens=0), chat_chunk("Hel", tokens=1),
                   chat_chunk("lo", tokens=2)])
    with pytest.raises(StreamBroken):
        state.consume([ERROR])
    body = state.next_attempt()
    assert body.messages[-1] == {"role": "assistant", "content": "Hello"}
    assert body.messages[:-1] == [{"role": "user", "content": "hi"}]
    assert body.continue_final_message and not body.add_generation_prompt
    assert body.max_completion_tokens == 8 and body.min_tokens == 2
    assert body.stream_options.continuous_usage_stats


def test_chat_continuation_extends_an_assistant_turn_the_client_opened() -> None:
    request = make_chat(messages=[{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "Sure:"}],
                        continue_final_message=True, add_generation_prompt=False)
    state = StreamResume(request, "chat")
    state.consume([chat_chunk(" one", tokens=1)])
    body = state.next_attempt()
    assert body.messages[-1]["content"] == "Sure: one" and len(body.messages) == 2
    assert request.messages[-1]["content"] == "Sure:"  # the client's request is untouched


def test_continuation_chunks_are_rewritten_into_the_original_stream() -> None:
    state = StreamResume(make_chat(stream_options={"include_usage": True}), "chat")
    first = payloads(state.consume([chat_chunk("", role="assistant", tokens=0),
                                    chat_chunk("Hel", tokens=1), chat_chunk("lo", tokens=2)]))
    with pytest.raises(StreamBroken) as broken:
        state.consume([chat_chunk(" wo", tokens=3), ERROR])
    first += payloads(broken.value.events)
    state.next_attempt()
    second = payloads(state.consume([
        chat_chunk("", role="assistant", tokens=0, id_="c2", created=2, prompt_tokens=9),
        chat_chunk(" world", tokens=1, id_="c2", created=2, prompt_tokens=9),
        chat_chunk("", tokens=2, id_="c2", created=2, finish="length", prompt_tokens=9),
        usage_chunk(tokens=2, id_="c2", prompt_tokens=9, obj="chat.completion.chunk"),
        DONE_EVENT]))
    chunks = [c for c in first + second if c != "[DONE]"]
    assert {c["id"] for c in chunks} == {"c1"} and {c["created"] for c in chunks} == {1}
    assert sum(1 for c in chunks for ch in c["choices"] if "role" in ch["delta"]) == 1
    assert second[-1] == "[DONE]" and second.count("[DONE]") == 1
    # " wo" came in the same item as the error, ahead of it: sent on, and counted.
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == "Hello wo world" == state.text
    # Usage: the original prompt, and the tokens of both attempts.
    assert second[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5,
                                   "total_tokens": 10}


def test_completion_continuation_and_usage_per_chunk_when_asked() -> None:
    request = make_completion(stream_options={"include_usage": True,
                                              "continuous_usage_stats": True})
    state = StreamResume(request, "completions")
    state.consume([text_chunk(" upon", tokens=1), text_chunk(" a", tokens=2)])
    with pytest.raises(StreamBroken):
        state.consume([ERROR])
    body = state.next_attempt()
    assert body.prompt == "Once upon a" and body.max_tokens == 8 and not body.echo
    out = payloads(state.consume([text_chunk(" time", tokens=1, id_="t2", prompt_tokens=5)]))
    assert out[0]["id"] == "t1" and out[0]["choices"][0]["text"] == " time"
    assert out[0]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_a_failure_before_any_output_retries_the_request_unchanged() -> None:
    request = make_completion()
    state = StreamResume(request, "completions")
    body = state.next_attempt()
    assert body.prompt == "Once" and body.max_tokens == 10


def test_client_errors_inside_a_stream_pass_through() -> None:
    state = StreamResume(make_completion(), "completions")
    error = sse({"error": {"message": "bad", "type": "BadRequestError", "code": 400}})
    assert payloads(state.consume([error]))[0]["error"]["code"] == 400


def test_stream_that_sent_every_token_just_closes() -> None:
    state = StreamResume(make_completion(max_tokens=2, stream_options={"include_usage": True}),
                         "completions")
    state.consume([text_chunk(" a", tokens=1), text_chunk(" b", tokens=2)])
    assert state.exhausted_budget()
    out = payloads(state.closing_events())
    assert out[0]["choices"][0]["finish_reason"] == "length" and out[0]["id"] == "t1"
    assert out[1]["usage"]["completion_tokens"] == 2 and out[-1] == "[DONE]"


@pytest.mark.parametrize("request_, kind, reason", [
    (make_chat(n=2), "chat", "n > 1"),
    (make_completion(echo=True), "completions", "echo"),
    (make_completion(prompt=[1, 2, 3]), "completions", "prompt is not a single text"),
    (make_chat(response_format={"type": "json_object"}), "chat", "structured output"),
    (make_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "chat", "tools"),
    (make_chat(), "chat", None),
    (make_completion(prompt=["one"]), "completions", None),
])
def test_what_cannot_be_resumed(request_: Any, kind: str, reason: str | None) -> None:
    assert resume_blocker(request_, kind) == reason


def test_a_chat_retried_before_any_output_keeps_its_role_chunk() -> None:
    state = StreamResume(make_chat(), "chat")
    state.next_attempt()
    out = payloads(state.consume([chat_chunk("", role="assistant", tokens=0, id_="c9"),
                                  chat_chunk("Hi", tokens=1, id_="c9")]))
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["id"] for c in out} == {"c9"}


def test_usage_keeps_the_engines_prompt_details() -> None:
    details = {"cached_tokens": 4}
    final = json.loads(usage_chunk(tokens=2, id_="c1", prompt_tokens=5,
                                   obj="chat.completion.chunk")[6:])
    final["usage"]["prompt_tokens_details"] = details
    state = StreamResume(make_chat(stream_options={"include_usage": True}), "chat")
    out = payloads(state.consume([chat_chunk("Hi", tokens=1), sse(final)]))
    assert out[-1]["usage"]["prompt_tokens_details"] == details
    # A continuation reports the first attempt's prompt, details included.
    state = StreamResume(make_chat(stream_options={"include_usage": True}), "chat")
    state.consume([chat_chunk("Hi", tokens=1), sse(final)])
    state.next_attempt()
    final["usage"]["prompt_tokens_details"] = {"cached_tokens": 0}
    final["usage"]["prompt_tokens"] = 7
    out = payloads(state.consume([sse(final)]))
    assert out[-1]["usage"]["prompt_tokens_details"] == details
    assert out[-1]["usage"]["prompt_tokens"] == 5


def test_a_chat_broken_after_its_role_chunk_only_is_sent_again_unchanged() -> None:
    state = StreamResume(make_chat(), "chat")
    state.consume([chat_chunk("", role="assistant", tokens=0)])
    body = state.next_attempt()
    assert body.messages == [{"role": "user", "content": "hi"}]
    assert not body.continue_final_message
    out = payloads(state.consume([chat_chunk("", role="assistant", tokens=0, id_="c2"),
                                  chat_chunk("Hi", tokens=1, id_="c2")]))
    assert len(out) == 1 and out[0]["id"] == "c1" and "role" not in out[0]["choices"][0]["delta"]
