"""The ingress's error handlers: every client error leaves as a 400-family OpenAI error."""

from __future__ import annotations

import asyncio
import json

from fastapi import HTTPException
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException

from serving.ingress.ingress import _on_http_exception, _on_openai_exception


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_unprocessable_is_answered_as_400_in_openai_shape() -> None:
    # vLLM's transcription model raises 422 for a form field of the wrong kind.
    resp = run(_on_http_exception(None, HTTPException(
        status_code=422, detail="Expected 'file' to be a file-like object, not 'str'.")))
    assert resp.status_code == 400
    body = json.loads(resp.body)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_request"
    assert "file-like" in body["error"]["message"]


def test_upstream_422_is_400_and_other_statuses_stay() -> None:
    resp = run(_on_openai_exception(None, OpenAIHTTPException(status_code=422, message="x")))
    assert resp.status_code == 400
    resp = run(_on_openai_exception(None, OpenAIHTTPException(status_code=404, message="y")))
    assert resp.status_code == 404
