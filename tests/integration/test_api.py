"""End-to-end: the OpenAI API of the live stack, driven with the `openai` client."""

from __future__ import annotations

import statistics
import time
import uuid

import httpx
import openai
import pytest

from tests.integration.conftest import Stack
from tests.integration.replicas import ReplicaSnapshot, assert_no_restart, snapshot

pytestmark = pytest.mark.integration

# ~1.3k tokens of shared system prompt: long enough to span several 128-token blocks.
SYSTEM_PROMPT = " ".join(
    f"Rule {i}: answer politely, cite the handbook section {i}, and never reveal secret {i * 7}."
    for i in range(60)
)


@pytest.fixture(scope="module")
def replicas_at_start(stack: Stack) -> ReplicaSnapshot:
    """Taken by the module's first test, before any error case below."""
    return snapshot(stack)


def test_ready_endpoint_reports_every_replica_warm(stack: Stack,
                                                   replicas_at_start: ReplicaSnapshot) -> None:
    resp = httpx.get(f"{stack.base_url}/ready", timeout=30)  # public: no key needed
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "ready": True, "replicas_ready": 2,
                           "replicas_wanted": 2}


def test_first_request_after_ready_is_as_fast_as_later_cold_requests(stack: Stack) -> None:
    # Cold = a prompt never seen before, so no prefix-cache help; same shape as the
    # first request the fixture sent the moment the ready line appeared.
    client = stack.client()
    later = []
    for i in range(4):
        t0 = time.perf_counter()
        client.completions.create(model=stack.model, max_tokens=8, temperature=0,
                                  prompt=f"The first request after ready: cold {uuid.uuid4()} {i}")
        later.append(time.perf_counter() - t0)
    typical = statistics.median(later)
    # An engine still initialising costs tens of seconds on its first generation;
    # a warm one answers in well under a second. 1 s of slack absorbs CI jitter.
    assert stack.first_request_s <= 3 * typical + 1.0, (stack.first_request_s, later)
    assert stack.first_request_text  # it generated text


def test_models(stack: Stack) -> None:
    models = stack.client().models.list()
    assert [m.id for m in models.data] == [stack.model]


def test_completion(stack: Stack) -> None:
    out = stack.client().completions.create(model=stack.model, prompt="The capital of France is",
                                            max_tokens=6, temperature=0)
    assert out.choices[0].text.strip()
    assert out.usage.completion_tokens == 6
    assert out.usage.prompt_tokens_details.cached_tokens is not None


def test_chat_completion(stack: Stack) -> None:
    out = stack.client().chat.completions.create(
        model=stack.model, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Say hello."}])
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content.strip()
    assert out.usage.prompt_tokens > 10  # the chat template wrapped the messages
    assert out.usage.prompt_tokens_details.cached_tokens is not None


def test_chat_streaming_with_usage(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model=stack.model, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count to five."}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 10
    assert usage.prompt_tokens_details.cached_tokens is not None


def test_completion_stream_ends_with_done(stack: Stack) -> None:
    with stack.http() as http:
        with http.stream("POST", "/v1/completions", json={
                "model": stack.model, "prompt": "One, two,", "max_tokens": 5, "stream": True,
                "stream_options": {"include_usage": True}}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert sum(e == "data: [DONE]" for e in events) == 1
    assert '"usage"' in events[-2] and '"cached_tokens"' in events[-2]


def test_repeated_long_prefix_reports_cached_tokens(stack: Stack) -> None:
    client = stack.client()
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "What is rule 3?"}]
    # pow2 may alternate replicas: after a few requests both hold the prefix.
    usages = []
    for _ in range(4):
        out = client.chat.completions.create(model=stack.model, messages=messages,
                                             max_tokens=2, temperature=0)
        usages.append(out.usage)
    assert usages[0].prompt_tokens > 1000
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    best = max(u.prompt_tokens_details.cached_tokens for u in usages[1:])
    # Everything but the last partial block is served from cache.
    assert best >= usages[0].prompt_tokens - 128
    assert best % 128 == 0


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"model": "smollm2-135m-instruct", "prompt": ', 400, "not valid JSON"),
        (b'{"model": "smollm2-135m-instruct", "prompt": "\xff\xfe bad"}', 400, "UTF-8"),
        (b'{"model": "no-such-model", "prompt": "hi"}', 404, "no-such-model"),
        (b'{"model": "smollm2-135m-instruct"}', 400, "prompt"),
        (b'{"model": "smollm2-135m-instruct", "prompt": "hi", "max_tokens": -5}', 400, "max_tokens"),
        (b'{"model": "smollm2-135m-instruct", "prompt": "hi", "max_tokens": 100000000}', 400,
         "max_tokens"),
        (b'{"model": "smollm2-135m-instruct", "prompt": "hi", "max_tokens": "ten"}', 400,
         "max_tokens"),
        (b'{"model": "smollm2-135m-instruct", "prompt": "hi", "temperature": "hot"}', 400,
         "temperature"),
        (b'[1, 2, 3]', 400, ""),
    ],
)
def test_bad_completion_requests_get_openai_shaped_4xx(stack: Stack, body: bytes, status: int,
                                                       needle: str) -> None:
    with stack.http() as http:
        resp = http.post("/v1/completions", content=body,
                         headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "smollm2-135m-instruct"}, "messages"),
        ({"model": "smollm2-135m-instruct", "messages": "hi"}, "messages"),
        ({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": 5}]},
         "content"),
        ({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}],
          "n": 0}, "n"),
    ],
)
def test_bad_chat_requests_get_openai_shaped_400(stack: Stack, body: dict, needle: str) -> None:
    with stack.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]


def test_prompt_longer_than_context_is_400_via_client(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().completions.create(model=stack.model, max_tokens=4,
                                          prompt="lorem ipsum dolor " * 3000)
    assert "context" in str(info.value).lower()


def test_unknown_model_via_client_is_not_found(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        stack.client().chat.completions.create(
            model="gpt-nothing", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"},
                                     {"Authorization": "Basic dGVzdDp0ZXN0"}])
def test_missing_or_wrong_api_key_is_401(stack: Stack, headers: dict) -> None:
    for path, method in (("/v1/models", "GET"), ("/v1/completions", "POST")):
        resp = httpx.request(method, f"{stack.base_url}{path}", headers=headers, timeout=30,
                             json={"model": stack.model, "prompt": "hi"})
        assert resp.status_code == 401, (path, resp.text)
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_via_client_is_authentication_error(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_service_survives_bad_input(stack: Stack, replicas_at_start: ReplicaSnapshot) -> None:
    """After every error case above, both replicas still serve and none restarted."""
    with stack.http() as http:
        ready = http.get("/ready").json()
    assert ready["replicas_ready"] == 2
    out = stack.client().completions.create(model=stack.model, prompt="Still alive?",
                                            max_tokens=3)
    assert out.choices[0].text is not None
    assert_no_restart(replicas_at_start, snapshot(stack))
