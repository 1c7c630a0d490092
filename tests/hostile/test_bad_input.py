"""Chaos tier: hand-written hostile input against the live stack.

What the schema-driven fuzzer (test_fuzz.py) cannot produce: bodies past the size
limit, JSON nested 100k deep, bytes that are not UTF-8, a wrong type in every field of
the two generation endpoints, token ids outside the vocabulary, and a few hundred
clients that trickle their requests a byte at a time while others are served. The
cases test_api.py already sends are not repeated here. Every answer must be an
OpenAI-shaped 4xx (or a success where the input is odd but valid), and at the end no
replica may have restarted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from serving.config import EngineConfig, ServerConfig
from tests.integration.conftest import Stack
from tests.integration.replicas import ReplicaSnapshot, assert_no_restart, snapshot

pytestmark = [pytest.mark.hostile, pytest.mark.integration]

# The shared stack runs with the default limits.
MAX_BODY_BYTES = ServerConfig().max_body_bytes
MAX_JSON_DEPTH = ServerConfig().max_json_depth
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def replicas_at_start(stack: Stack) -> ReplicaSnapshot:
    return snapshot(stack)


def post(stack: Stack, path: str, content: bytes | Any, **headers: str) -> httpx.Response:
    with stack.http() as http:
        return http.post(path, content=content,
                         headers={"content-type": "application/json", **headers})


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


# --- size and shape of the body ------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/prefixes"])
def test_body_past_the_limit_is_413(stack: Stack, replicas_at_start: ReplicaSnapshot,
                                    path: str) -> None:
    text = "a " * MAX_BODY_BYTES  # twice the limit once encoded
    body = {"model": stack.model, "prompt": text, "messages": [{"role": "user", "content": text}]}
    error = assert_openai_error(post(stack, path, json.dumps(body).encode()), 413)
    assert error["code"] == "request_too_large"


def test_chunked_body_past_the_limit_is_413(stack: Stack) -> None:
    chunk = b" " * 65_536  # JSON whitespace: only the size can be wrong

    def body():
        yield b'{"model": "' + stack.model.encode() + b'", "prompt": "x"'
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):
            yield chunk
        yield b"}"

    error = assert_openai_error(post(stack, "/v1/completions", body()), 413)
    assert error["code"] == "request_too_large"


def test_body_within_the_limit_reaches_validation(stack: Stack) -> None:
    # Under the size limit but far over the context window: the engine's 400, not 413.
    text = "a " * (MAX_BODY_BYTES // 4)
    body = json.dumps({"model": stack.model, "prompt": text, "max_tokens": 1}).encode()
    assert len(body) < MAX_BODY_BYTES
    error = assert_openai_error(post(stack, "/v1/completions", body), 400)
    assert "context length" in error["message"]


def test_openai_client_sees_413_as_an_api_error(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().completions.create(model=stack.model, max_tokens=1,
                                          prompt="a " * MAX_BODY_BYTES)
    assert info.value.status_code == 413
    assert info.value.body["code"] == "request_too_large"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_json_nested_100k_deep_is_400(stack: Stack, path: str, opener: bytes,
                                      closer: bytes) -> None:
    depth = 100_000
    body = b'{"model": "' + stack.model.encode() + b'", "prompt": ' + opener * depth \
        + b"1" + closer * depth + b"}"
    error = assert_openai_error(post(stack, path, body), 400)
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]


def test_a_deep_json_schema_is_400_and_a_normal_one_is_served(stack: Stack) -> None:
    def nested(levels: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(levels):
            schema = {"type": "object", "properties": {"a": schema}}
        return schema

    def ask(schema: dict[str, Any]) -> httpx.Response:
        body = {"model": stack.model, "messages": USER, "max_tokens": 2, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
        return post(stack, "/v1/chat/completions", json.dumps(body).encode())

    # Each schema level is two JSON levels (`properties`, then the property).
    error = assert_openai_error(ask(nested(MAX_JSON_DEPTH)), 400)
    assert "deeper than" in error["message"]
    assert ask(nested(3)).status_code == 200


@pytest.mark.parametrize("raw", [
    b"\xff\xfe",            # not UTF-8 at all
    b"\xe2\x82",            # a truncated multi-byte sequence
    b"\xc0\xaf",            # an overlong encoding of '/'
    b"\xed\xa0\x80",        # a UTF-16 surrogate encoded as UTF-8
], ids=["invalid", "truncated", "overlong", "surrogate"])
@pytest.mark.parametrize("where", ["value", "key"])
def test_invalid_utf8_in_chat_is_400(stack: Stack, raw: bytes, where: str) -> None:
    if where == "value":
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "a%sb"}]}'
    else:
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "x%s": 1}'
    error = assert_openai_error(post(stack, "/v1/chat/completions",
                                     body % (stack.model.encode(), raw)), 400)
    assert "UTF-8" in error["message"]


def test_raw_nul_byte_inside_a_string_is_400(stack: Stack) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "a\x00b"}]}'
    error = assert_openai_error(post(stack, "/v1/chat/completions",
                                     body % stack.model.encode()), 400)
    assert "JSON" in error["message"]


@pytest.mark.parametrize(("content", "status"), [
    ("a\\u0000b", 200),              # NUL is a character like any other
    ("a\\ud83d\\ude00b", 200),       # a surrogate pair: an emoji
    ("a\\ud800b", 400),              # a lone surrogate is valid JSON but not text
    ("a\\ude00\\ud83db", 400),       # a pair in the wrong order
])
def test_escapes_nul_and_surrogates(stack: Stack, content: str, status: int) -> None:
    body = ('{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "%s"}]}'
            % (stack.model, content)).encode()
    resp = post(stack, "/v1/chat/completions", body)
    if status == 200:
        assert resp.status_code == 200, resp.text
    else:
        assert "surrogate" in assert_openai_error(resp, 400)["message"]


def test_nul_in_model_and_prefix_key_is_404(stack: Stack) -> None:
    body = json.dumps({"model": "a\u0000b", "messages": USER}).encode()
    assert assert_openai_error(post(stack, "/v1/chat/completions", body), 404)["code"] \
        == "model_not_found"
    with stack.http() as http:
        assert_openai_error(http.delete("/v1/prefixes/a%00b"), 404)


# --- a wrong type in every field -----------------------------------------------------

# One value per field that no coercion turns into the field's type.
COMMON_WRONG = {
    "model": 5, "max_tokens": "ten", "temperature": "hot", "top_p": {}, "n": "two",
    "stream": {"on": 1}, "stop": 5, "presence_penalty": "x", "frequency_penalty": [],
    "logit_bias": [1, 2], "user": 5, "seed": "x", "stream_options": "x",
    "response_format": "json", "top_k": "x", "min_p": "x", "repetition_penalty": "x",
    "min_tokens": "x", "ignore_eos": {}, "stop_token_ids": "x", "include_stop_str_in_output": [],
    "skip_special_tokens": [], "prompt_logprobs": "x", "truncate_prompt_tokens": "x",
    "structured_outputs": "x", "priority": "x", "bad_words": 5, "allowed_token_ids": "x",
}
CHAT_WRONG = {**COMMON_WRONG, "messages": {"role": "user"}, "max_completion_tokens": [1],
              "logprobs": "maybe", "top_logprobs": "x", "tools": {"type": "function"},
              "tool_choice": 5, "parallel_tool_calls": "x", "cache_salt": 5,
              "add_generation_prompt": "x", "continue_final_message": "x",
              "chat_template_kwargs": "x", "echo": []}
COMPLETION_WRONG = {**COMMON_WRONG, "prompt": {"a": 1}, "echo": "x", "suffix": 5,
                    "logprobs": "x", "add_special_tokens": "x"}


def _wrong_type_cases():
    for field, value in CHAT_WRONG.items():
        yield pytest.param("/v1/chat/completions", {"messages": USER}, field, value,
                           id=f"chat-{field}")
    for field, value in COMPLETION_WRONG.items():
        yield pytest.param("/v1/completions", {"prompt": "hi"}, field, value,
                           id=f"completions-{field}")


@pytest.mark.parametrize(("path", "base", "field", "value"), _wrong_type_cases())
def test_wrong_type_in_any_field_is_400_naming_it(stack: Stack, path: str, base: dict,
                                                  field: str, value: Any) -> None:
    body = {"model": stack.model, "max_tokens": 2, **base, field: value}
    error = assert_openai_error(post(stack, path, json.dumps(body).encode()), 400)
    assert field in error["message"] or field in (error["param"] or ""), error


# --- values the engine must refuse ---------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("n", 1_000_000), ("n", EngineConfig().max_n + 1), ("max_tokens", -1), ("max_tokens", 2 ** 70),
    ("max_completion_tokens", 10 ** 9), ("logprobs", True), ("top_logprobs", 10 ** 6),
])
def test_out_of_range_chat_values_are_400(stack: Stack, field: str, value: Any) -> None:
    body = {"model": stack.model, "messages": USER, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    elif field == "logprobs":
        body["top_logprobs"] = 10 ** 6
    assert_openai_error(post(stack, "/v1/chat/completions", json.dumps(body).encode()), 400)


def test_chat_prompt_longer_than_the_context_is_400(stack: Stack) -> None:
    body = {"model": stack.model, "max_tokens": 2,
            "messages": [{"role": "user", "content": "lorem ipsum dolor " * 3000}]}
    error = assert_openai_error(post(stack, "/v1/chat/completions", json.dumps(body).encode()),
                                400)
    assert "context length" in error["message"]


@pytest.mark.parametrize("prompt", [
    [1_000_000], [2 ** 63], [[1, 2], [10 ** 7]], [-5], [1] * 3000,
], ids=["beyond-vocab", "int64-overflow", "batch-with-one-bad", "negative", "past-context"])
def test_token_id_prompts_outside_vocabulary_or_context_are_400(stack: Stack,
                                                                prompt: list) -> None:
    body = {"model": stack.model, "prompt": prompt, "max_tokens": 2}
    assert_openai_error(post(stack, "/v1/completions", json.dumps(body).encode()), 400)


def test_unknown_model_in_token_prompt_and_prefix_is_404(stack: Stack) -> None:
    resp = post(stack, "/v1/completions",
                json.dumps({"model": "nope", "prompt": [1, 2], "max_tokens": 2}).encode())
    assert assert_openai_error(resp, 404)["code"] == "model_not_found"
    resp = post(stack, "/v1/prefixes",
                json.dumps({"model": "nope", "messages": [{"role": "system",
                                                           "content": "x"}]}).encode())
    assert assert_openai_error(resp, 404)["code"] == "model_not_found"


# --- slow clients ----------------------------------------------------------------------

SLOW_CLIENTS = 300
NORMAL_REQUESTS = 6


async def _trickle(host: str, port: int, head: bytes, connected: asyncio.Event,
                   counter: list[int]) -> None:
    """Open a connection and send `head` one byte per 0.2 s until cancelled."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head[:1])
        await writer.drain()
        counter[0] += 1
        if counter[0] == SLOW_CLIENTS:
            connected.set()
        for i in range(1, len(head)):
            await asyncio.sleep(0.2)
            writer.write(head[i:i + 1])
            await writer.drain()
    finally:
        writer.close()


def test_slow_clients_do_not_starve_normal_requests(stack: Stack) -> None:
    host, port = stack.base_url.removeprefix("http://").split(":")
    auth = f"Authorization: Bearer {stack.api_key}\r\n"
    # Half never finish their headers; half finish them and then trickle the body.
    slow_headers = (f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{auth}X-Pad: ".encode()
                    + b"a" * 10_000)
    slow_body = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{auth}"
                 "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode())
    slow_body += b'{"model": "' + stack.model.encode() + b'", "prompt": "' + b"a" * 99_000

    async def scenario() -> list[int]:
        connected, counter = asyncio.Event(), [0]
        tasks = [asyncio.create_task(_trickle(host, int(port),
                                              slow_headers if i % 2 else slow_body,
                                              connected, counter))
                 for i in range(SLOW_CLIENTS)]
        try:
            await asyncio.wait_for(connected.wait(), timeout=120)
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=300,
                                         headers={"Authorization": f"Bearer {stack.api_key}"}) \
                    as client:
                statuses = []
                for i in range(NORMAL_REQUESTS):
                    resp = await client.post("/v1/completions", json={
                        "model": stack.model, "prompt": f"Slow neighbours {i}:",
                        "max_tokens": 2})
                    statuses.append(resp.status_code)
            # Every slow client is still connected (none failed) while they were served.
            assert not [t for t in tasks if t.done() and t.exception() is not None]
            return statuses
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert asyncio.run(scenario()) == [200] * NORMAL_REQUESTS


# --- and after all of it ---------------------------------------------------------------

def test_no_replica_restarted_and_the_stack_still_answers(
        stack: Stack, replicas_at_start: ReplicaSnapshot) -> None:
    out = stack.client().chat.completions.create(model=stack.model, messages=USER,
                                                 max_tokens=2, temperature=0)
    assert out.choices[0].message.content is not None
    assert_no_restart(replicas_at_start, snapshot(stack))
