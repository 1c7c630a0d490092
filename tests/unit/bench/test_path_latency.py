"""The serving-path probe: targets parsed, TTFT read from the first content chunk, and
what a path adds computed against the direct target."""

from __future__ import annotations

import argparse
import json

import httpx
import pytest

from bench import path_latency


def test_targets_are_name_equals_url_without_v1() -> None:
    assert path_latency.target("direct=http://127.0.0.1:8101/v1/") == (
        "direct", "http://127.0.0.1:8101")
    for bad in ("http://x", "=http://x", "a=ftp://x"):
        with pytest.raises(argparse.ArgumentTypeError):
            path_latency.target(bad)


def test_ttft_is_the_first_chunk_with_content_not_the_role_chunk() -> None:
    def chunk(delta: dict[str, str]) -> str:
        return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}) + "\n\n"

    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        body = chunk({"role": "assistant", "content": ""}) + chunk({"content": "4"}) + (
            "data: [DONE]\n\n")
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    with httpx.Client(base_url="http://t", transport=httpx.MockTransport(handler)) as http:
        ttft, e2e = path_latency.one_request(http, "m", 3, 4)
    assert 0 < ttft <= e2e
    assert sent[0]["stream"] and sent[0]["max_tokens"] == 4
    assert sent[0]["messages"][0]["content"] == path_latency.SYSTEM_PROMPT


def test_added_time_is_each_percentile_minus_the_direct_ones() -> None:
    rows = [{"target": "cacheroute", "requests": 3, "ttft_p50_ms": 70.0, "ttft_p99_ms": 90.0,
             "e2e_p50_ms": 150.0, "e2e_p99_ms": 170.0},
            {"target": "direct", "requests": 3, "ttft_p50_ms": 57.0, "ttft_p99_ms": 60.0,
             "e2e_p50_ms": 138.0, "e2e_p99_ms": 140.0}]
    path_latency.added_over_direct(rows)
    assert (rows[0]["added_ttft_p50_ms"], rows[0]["added_ttft_p99_ms"]) == (13.0, 30.0)
    assert "added_ttft_p50_ms" not in rows[1]
    table = path_latency.markdown(rows)
    assert "| cacheroute | 3 | 70.0 | 90.0 | 150.0 | 170.0 | 13.0 / 30.0 |" in table
    assert "| direct | 3 | 57.0 | 60.0 | 138.0 | 140.0 | - |" in table
