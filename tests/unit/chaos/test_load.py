"""The drill's load: a seeded plan, one request judged, the runner's bounds; over a
fake transport (httpx.MockTransport), no service."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from chaos.load import LoadRunner, LoadSpec, PlannedRequest, plan_requests, send
from tests.unit.chaos.chaos_fakes import chat_chunk, sse

USAGE = {"prompt_tokens": 200, "completion_tokens": 4,
         "prompt_tokens_details": {"cached_tokens": 128}}


def test_plan_is_seeded_and_mixed() -> None:
    spec = LoadSpec(max_requests=80, seed=3)
    first, again = plan_requests(spec, "m"), plan_requests(spec, "m")
    assert first == again
    assert plan_requests(LoadSpec(max_requests=80, seed=4), "m") != first
    kinds = {(p.kind, p.stream) for p in first}
    assert kinds == {("chat", True), ("chat", False), ("completion", True),
                     ("completion", False)}
    for p in first:
        assert p.body["model"] == "m"
        assert ("stream_options" in p.body) == p.stream


def test_requests_of_a_tenant_share_its_system_prompt() -> None:
    plan = plan_requests(LoadSpec(max_requests=40, tenants=2), "m")
    chats = [p for p in plan if p.kind == "chat" and p.tenant == "t00"]
    prompts = {p.body["messages"][0]["content"] for p in chats}
    assert len(chats) > 1 and len(prompts) == 1
    system = prompts.pop()
    completions = [p for p in plan if p.kind == "completion" and p.tenant == "t00"]
    assert completions and all(p.body["prompt"].startswith(system) for p in completions)


def test_long_streams_ask_for_exact_lengths() -> None:
    plan = plan_requests(LoadSpec(max_requests=30, stream_fraction=1.0,
                                  long_stream_fraction=1.0, long_stream_tokens=99), "m")
    assert all(p.body["max_tokens"] == 99 and p.body["ignore_eos"] for p in plan)


@pytest.mark.parametrize("bad", [{"max_requests": 0}, {"concurrency": 0},
                                 {"max_duration_s": 0}, {"stream_fraction": 1.5},
                                 {"tenants": 0}])
def test_spec_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        LoadSpec(**bad)


def _planned(stream: bool, kind: str = "chat") -> PlannedRequest:
    body = {"model": "m", "max_tokens": 4}
    if stream:
        body["stream"] = True
    return PlannedRequest(index=7, kind=kind, stream=stream, tenant="t01", body=body)


def _client(handler) -> httpx.Client:
    return httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))


def _clock() -> float:
    return 1.5


def test_plain_request_ok_with_usage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, json={"id": "x", "choices": [{"index": 0}], "usage": USAGE})

    record = send(_client(handler), _planned(False), clock=_clock)
    assert record.ok and not record.broken
    assert (record.prompt_tokens, record.cached_tokens) == (200, 128)


def test_plain_request_5xx_is_failed_not_broken() -> None:
    record = send(_client(lambda r: httpx.Response(503, text="no replica")),
                  _planned(False, "completion"), clock=_clock)
    assert not record.ok and not record.broken
    assert record.status == 503 and "no replica" in (record.error or "")


def test_connection_refused_is_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    record = send(_client(handler), _planned(True), clock=_clock)
    assert not record.ok and not record.broken and "ConnectError" in (record.error or "")


def test_whole_stream_is_ok() -> None:
    body = sse(chat_chunk("a"), chat_chunk("", usage=USAGE))
    record = send(_client(lambda r: httpx.Response(200, text=body)), _planned(True),
                  clock=_clock)
    assert record.ok and record.cached_tokens == 128


def test_stream_that_started_then_failed_is_broken() -> None:
    body = sse(chat_chunk("a"), {"error": {"message": "EngineDeadError"}})
    record = send(_client(lambda r: httpx.Response(200, text=body)), _planned(True),
                  clock=_clock)
    assert not record.ok and record.broken and "EngineDeadError" in (record.error or "")


class _DroppingStream(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield sse(chat_chunk("a"), done=False).encode()
        raise httpx.RemoteProtocolError("peer closed connection")


def test_connection_dropped_mid_stream_is_broken() -> None:
    record = send(_client(lambda r: httpx.Response(200, stream=_DroppingStream())),
                  _planned(True), clock=_clock)
    assert record.broken and (record.error or "").startswith("transport")


def test_stream_refused_up_front_is_failed_only() -> None:
    record = send(_client(lambda r: httpx.Response(500, json={"error": {"message": "x"}})),
                  _planned(True), clock=_clock)
    assert not record.ok and not record.broken and record.status == 500


def _ok_handler(request: httpx.Request) -> httpx.Response:
    payload = json.loads(request.content)
    if payload.get("stream"):
        return httpx.Response(200, text=sse(chat_chunk("a"), chat_chunk("", usage=USAGE)))
    return httpx.Response(200, json={"choices": [{"index": 0}], "usage": USAGE})


def test_runner_sends_every_planned_request_once() -> None:
    spec = LoadSpec(max_requests=25, concurrency=3)
    seen: list[int] = []
    lock = threading.Lock()

    def on_record(record) -> None:
        with lock:
            seen.append(record.index)

    runner = LoadRunner(plan_requests(spec, "m"), spec, on_record=on_record,
                        client_factory=lambda: _client(_ok_handler))
    runner.start()
    runner.join(timeout_s=30)
    records = runner.records()
    assert [r.index for r in records] == list(range(25))
    assert sorted(seen) == list(range(25))
    assert all(r.ok for r in records) and runner.in_flight_streams == 0


def test_runner_stops_on_request() -> None:
    spec = LoadSpec(max_requests=10_000, concurrency=2)
    release = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        release.wait(5)
        return _ok_handler(request)

    runner = LoadRunner(plan_requests(spec, "m"), spec, client_factory=lambda: _client(slow))
    runner.start()
    runner.stop()
    release.set()
    runner.join(timeout_s=30)
    assert runner.done and len(runner.records()) <= 2


def test_runner_stops_at_its_duration() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every reading is a second later
        return now[0]

    spec = LoadSpec(max_requests=10_000, concurrency=1, max_duration_s=20)
    runner = LoadRunner(plan_requests(spec, "m"), spec, clock=clock,
                        client_factory=lambda: _client(_ok_handler))
    runner.start()
    runner.join(timeout_s=30)
    assert runner.done and 0 < len(runner.records()) < 20
