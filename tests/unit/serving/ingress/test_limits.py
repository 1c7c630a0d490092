"""The request-body limit (serving/ingress/limits.py): on the ingress's real FastAPI app with a
TestClient, and as a bare ASGI middleware fed hand-made messages where the client
cannot produce them (chunked bodies, a Content-Length that lies)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from serving.config import ServiceConfig
from serving.ingress.limits import (
    BodyLimitMiddleware,
    declared_length,
    has_lone_surrogate_escape,
    json_body_problem,
    json_depth_exceeds,
)

API_KEY = "k-0123"
LIMIT = 4096
DEPTH = 16


def make_app(**server: Any):
    from serving.ingress.ingress import build_fastapi_app

    config = ServiceConfig.model_validate({"server": {
        "api_keys": [API_KEY], "api_keys_env": None, "max_body_bytes": LIMIT,
        "max_json_depth": DEPTH, **server}})
    app = build_fastapi_app(config)
    seen: list[int] = []

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(len(json.dumps(body)))
        return {"keys": sorted(body)}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        data = await request.body()
        seen.append(len(data))
        return {"bytes": len(data)}

    return app, seen


def client(app) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"})


def assert_openai_413(resp) -> None:
    assert resp.status_code == 413, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(LIMIT) in error["message"]


def test_body_over_the_limit_is_413_and_never_reaches_the_endpoint() -> None:
    app, seen = make_app()
    resp = client(app).post("/echo", json={"prompt": "a" * LIMIT})
    assert_openai_413(resp)
    assert seen == []


def test_body_at_the_limit_passes_unchanged() -> None:
    app, seen = make_app()
    padding = LIMIT - len(json.dumps({"p": ""}).encode())
    body = json.dumps({"p": "a" * padding}).encode()
    assert len(body) == LIMIT
    resp = client(app).post("/raw", content=body)
    assert resp.status_code == 200, resp.text
    assert seen == [LIMIT]


def test_streamed_body_without_length_is_counted_as_it_arrives() -> None:
    app, seen = make_app()
    chunks = [b"x" * 1000] * 10  # a generator body goes out chunked: no Content-Length
    resp = client(app).post("/raw", content=iter(chunks))
    assert_openai_413(resp)
    assert seen == []


def test_caller_without_a_key_gets_401_not_the_limit() -> None:
    app, _ = make_app()
    resp = TestClient(app).post("/echo", json={"prompt": "a" * LIMIT})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_limit_follows_the_config() -> None:
    app, seen = make_app(max_body_bytes=LIMIT * 4)
    resp = client(app).post("/echo", json={"prompt": "a" * LIMIT})
    assert resp.status_code == 200, resp.text
    assert len(seen) == 1


@pytest.mark.parametrize("body", [
    b'{"p": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"p": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}",
])
def test_deep_json_is_400_before_parsing(body: bytes) -> None:
    app, seen = make_app(max_body_bytes=len(body))
    resp = client(app).post("/echo", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert f"deeper than {DEPTH} levels" in error["message"]
    assert error["code"] == "invalid_request"
    assert seen == []


def test_json_past_the_parsers_own_limit_says_nested_not_utf8() -> None:
    # Without the depth check (a path it does not cover), FastAPI reports the
    # parser's RecursionError as an unparsable body; the message must not blame UTF-8.
    from fastapi import FastAPI

    from serving.ingress.ingress import _on_http_exception
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI()
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    body = b'{"p": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = TestClient(app).post("/echo", content=body,
                                headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "nested too deeply" in resp.json()["error"]["message"]


@pytest.mark.parametrize(("body", "needle"), [
    (b'{"p": "a\xed\xa0\x80b"}', "UTF-8"),       # a surrogate, UTF-8 encoded
    (b'{"p": "a\xc0\xafb"}', "UTF-8"),           # an overlong encoding
    (b'{"p": "a\\ud800b"}', "surrogate"),         # an escaped high surrogate alone
    (b'{"p": "a\\udc00\\ud800"}', "surrogate"),   # a pair in the wrong order
])
def test_json_that_is_not_text_is_400(body: bytes, needle: str) -> None:
    app, seen = make_app()
    resp = client(app).post("/raw", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]
    assert seen == []


@pytest.mark.parametrize("body", [
    json.dumps({"p": "emoji \U0001F600 and [brackets] {in} strings"}).encode(),  # ASCII escapes
    json.dumps({"p": "emoji \U0001F600"}, ensure_ascii=False).encode(),
    b'{"p": "a literal backslash-u: \\\\ud800"}',
    json.dumps({"p": [[[[1]]]]}).encode(),
])
def test_ordinary_json_passes_unchanged(body: bytes) -> None:
    app, seen = make_app()
    resp = client(app).post("/raw", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert seen == [len(body)]


def test_non_json_bodies_are_not_inspected() -> None:
    app, seen = make_app()
    resp = client(app).post("/raw", content=b"\xff" + b"[" * 100,
                            headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(("body", "limit", "expected"), [
    (b'{"a": "[[[[[[", "b": [[1]]}', 3, False),   # brackets inside strings do not count
    (b'{"a": "[[[[[[", "b": [[1]]}', 2, True),
    (b'{"a": "\\"[[[", "b": [1]}', 2, False),     # an escaped quote does not end the string
    (b"[" * 100_000, 64, True),
    (b"[]" * 1000, 1, False),                      # wide is not deep
])
def test_json_depth(body: bytes, limit: int, expected: bool) -> None:
    assert json_depth_exceeds(body, limit) is expected


@pytest.mark.parametrize(("text", "expected"), [
    (rb'"\ud83d\ude00"', False), (rb'"\uD83D\uDE00"', False), (rb'"\\ud800"', False),
    (rb'"\ud800"', True), (rb'"\udc00"', True), (rb'"\ud83d\u0041"', True),
    (rb'"\ud83d"', True), (rb'"plain"', False),
])
def test_lone_surrogate_escapes(text: bytes, expected: bool) -> None:
    assert has_lone_surrogate_escape(text) is expected


def test_problems_are_reported_in_order() -> None:
    assert json_body_problem(b'{"a": 1}', 4) is None
    assert "UTF-8" in json_body_problem(b'["\xff", "\\ud800"]', 4)
    assert "surrogate" in json_body_problem(b'[[[[["\\ud800"]]]]]', 4)
    assert "deeper than 4" in json_body_problem(b"[[[[[1]]]]]", 4)


def test_undecodable_body_still_says_utf8() -> None:
    app, _ = make_app()
    resp = client(app).post("/echo", content=b'{"p": "\xff\xfe"}',
                            headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "UTF-8" in resp.json()["error"]["message"]


@pytest.mark.parametrize(("headers", "expected"), [
    ([(b"content-length", b"12")], 12),
    ([(b"Content-Length", b"0")], 0),
    ([(b"content-length", b"twelve")], None),
    ([(b"content-length", b"-3")], None),
    ([], None),
])
def test_declared_length(headers: list, expected: int | None) -> None:
    assert declared_length({"headers": headers}) == expected


# --- the bare middleware -------------------------------------------------------------

class RecordingApp:
    """An ASGI app that reads the whole body, then answers 200."""

    def __init__(self) -> None:
        self.body = b""
        self.extra: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        more = True
        while more:
            message = await receive()
            self.body += message.get("body", b"")
            more = message.get("more_body", False)
            if message["type"] == "http.disconnect":
                self.extra.append(message)
                return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(app, headers: list, chunks: list[bytes]) -> list[dict]:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(BodyLimitMiddleware(app, max_body_bytes=LIMIT, max_json_depth=DEPTH)(scope, receive, send))
    return sent


def test_a_content_length_that_lies_is_still_caught() -> None:
    inner = RecordingApp()
    sent = run(inner, [(b"content-length", b"10")], [b"y" * 3000, b"y" * 3000])
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert inner.body == b""  # nothing reached the app


def test_small_chunked_body_reaches_the_app_whole() -> None:
    inner = RecordingApp()
    sent = run(inner, [], [b"a" * 1000, b"b" * 1000, b""])
    assert sent[0]["status"] == 200
    assert inner.body == b"a" * 1000 + b"b" * 1000


def test_a_client_that_leaves_mid_body_is_reported_to_the_app() -> None:
    inner = RecordingApp()
    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    messages = [{"type": "http.request", "body": b"a", "more_body": True},
                {"type": "http.disconnect"}]

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        raise AssertionError("nothing is sent to a client that left")

    asyncio.run(BodyLimitMiddleware(inner, max_body_bytes=LIMIT, max_json_depth=DEPTH)(scope, receive, send))
    assert (inner.body, inner.extra) == (b"a", [{"type": "http.disconnect"}])


def test_other_scopes_pass_through() -> None:
    calls: list[str] = []

    async def app(scope, receive, send) -> None:
        calls.append(scope["type"])

    asyncio.run(BodyLimitMiddleware(app, max_body_bytes=1, max_json_depth=DEPTH)({"type": "lifespan"}, None, None))
    assert calls == ["lifespan"]
