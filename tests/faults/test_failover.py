"""Faults on a live stack: a hung engine, a crashed engine, and the recovery after.

Every request sent while a fault happens must succeed, and every stream must end as
one stream: one id, one role chunk, no error chunk, exactly one `[DONE]` (last), and
usage adding up (the prompt's tokens as the client sent it, every requested token).
The failover metrics on /metrics must show that the fault was actually hit
(docs/operations/failover.md), so a test cannot pass because the fault missed every request.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.cluster import EngineProcess, engine_processes
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Long enough that every stream is still running when the fault hits (ignore_eos),
# even on a loaded 2-core machine where the per-replica running counts that
# start_streams waits for reach /metrics seconds late, and where one of the streams
# sent together has been seen reaching the proxy 17-30 s after the others (a stream
# of 480 tokens, about 21 s alone, had then finished before the last one started).
MAX_TOKENS = 960
# Chunks a stream must have received before the fault is injected.
STARTED_CHUNKS = 3
WAIT_S = 300.0


@dataclass
class StreamResult:
    kind: str
    events: list[str] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    usage: dict[str, Any] | None = None


def _body(kind: str, prompt: str, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
                            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _path(kind: str) -> str:
    return "/v1/chat/completions" if kind == "chat" else "/v1/completions"


def stream(stack: Stack, kind: str, prompt: str, started: threading.Semaphore) -> StreamResult:
    result = StreamResult(kind)
    body = {"model": stack.model, **_body(kind, prompt, stream=True)}
    with stack.http() as http, http.stream("POST", _path(kind), json=body) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            result.events.append(payload)
            if payload == "[DONE]":
                continue
            chunk = json.loads(payload)
            result.chunks.append(chunk)
            if chunk.get("usage"):
                result.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") if kind == "chat" \
                    else choice.get("text")
                result.text += piece or ""
            if len(result.chunks) == STARTED_CHUNKS:
                started.release()
    return result


def unary(stack: Stack, kind: str, prompt: str) -> dict[str, Any]:
    client = stack.client()
    extra = {"ignore_eos": True}
    if kind == "chat":
        resp = client.chat.completions.create(
            model=stack.model, messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS, temperature=0, extra_body=extra)
    else:
        resp = client.completions.create(model=stack.model, prompt=prompt,
                                         max_tokens=MAX_TOKENS, temperature=0, extra_body=extra)
    return resp.model_dump()


def prompt_tokens(stack: Stack, kind: str, prompt: str) -> int:
    body = {"model": stack.model, **_body(kind, prompt, stream=False), "max_tokens": 1}
    with stack.http() as http:
        resp = http.post(_path(kind), json=body)
    resp.raise_for_status()
    return resp.json()["usage"]["prompt_tokens"]


def assert_one_whole_stream(result: StreamResult, expected_prompt_tokens: int) -> None:
    assert result.events and result.events[-1] == "[DONE]"
    assert result.events.count("[DONE]") == 1
    assert not [c for c in result.chunks if "error" in c], result.chunks
    assert len({c["id"] for c in result.chunks}) == 1
    assert len({c["created"] for c in result.chunks}) == 1
    if result.kind == "chat":
        roles = [c for c in result.chunks for ch in c["choices"] if ch["delta"].get("role")]
        assert len(roles) == 1
    finishes = [ch["finish_reason"] for c in result.chunks for ch in c["choices"]
                if ch.get("finish_reason")]
    assert finishes == ["length"]
    assert result.text
    assert result.usage is not None
    assert result.usage["prompt_tokens"] == expected_prompt_tokens
    assert result.usage["completion_tokens"] == MAX_TOKENS
    assert result.usage["total_tokens"] == expected_prompt_tokens + MAX_TOKENS


def assert_whole_response(resp: dict[str, Any]) -> None:
    assert resp["choices"][0]["finish_reason"] == "length"
    assert resp["usage"]["completion_tokens"] == MAX_TOKENS


def metrics(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with stack.http() as http:
        text = http.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(values: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= set(lab))


def running_by_replica(stack: Stack) -> dict[str, float]:
    return {dict(lab)["replica"]: v for (n, lab), v in metrics(stack).items()
            if n == "vllm:num_requests_running"}


def wait_until(check, what: str, timeout_s: float = WAIT_S, period_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(period_s)


PROMPTS = [f"Chaos prompt {i}: tell the long story of the lighthouse keeper number {i}."
           for i in range(16)]


def start_streams(pool: ThreadPoolExecutor, stack: Stack, n: int, *, offset: int = 0):
    """`n` streams under way, and the replica running the most of them (the victim).

    The victim is read from the engines' own running counts, not assumed: the router
    places the prompts (ring, ownership of earlier tests' prefixes), so a fixed pick
    could be a replica with none of them, and the fault would test nothing."""
    # Requests of an earlier test (a hung engine finishes them once resumed) must be
    # gone, or their counts would pass for these streams.
    wait_until(lambda: not any(running_by_replica(stack).values()),
               "the engines to be idle before the fault", timeout_s=WAIT_S)
    started = threading.Semaphore(0)
    kinds = ["chat", "completions"]
    futures = [pool.submit(stream, stack, kinds[i % 2], PROMPTS[offset + i], started)
               for i in range(n)]
    for _ in range(n):
        if not started.acquire(timeout=WAIT_S):
            pytest.fail("streams did not start")
    # Engine stats reach /metrics every ~2 s: wait until they count every stream.
    wait_until(lambda: sum(running_by_replica(stack).values()) >= n,
               "every stream counted as running", timeout_s=60)
    running = running_by_replica(stack)
    # The fault must hit streams under way, or the test proves nothing about resuming.
    assert not [f for f in futures if f.done()], "a stream finished before the fault"
    return futures, max(running, key=running.get)


def expected_prompt_tokens(stack: Stack, n: int, *, offset: int = 0) -> list[int]:
    kinds = ["chat", "completions"]
    return [prompt_tokens(stack, kinds[i % 2], PROMPTS[offset + i]) for i in range(n)]


def engines_by_replica(chaos_stack) -> dict[str, EngineProcess]:
    """Each replica's engine process, by Serve replica id (the `replica` label on
    /metrics). Read before the streams start: connecting to the cluster takes
    seconds, which the streams must not spend finishing."""
    from chaos.cluster import ServeCluster

    with ServeCluster(chaos_stack.ray_address) as cluster:
        pids = {r.pid: r.replica_id for r in cluster.replicas() if r.running}
    engines = engine_processes(chaos_stack.proc.pid)
    assert len(engines) == 2, engines
    by_replica = {pids[e.replica_pid]: e for e in engines if e.replica_pid in pids}
    assert len(by_replica) == 2, (pids, engines)
    return by_replica


def test_hung_engine_is_ejected_and_its_requests_finish_elsewhere(chaos_stack) -> None:
    stack = chaos_stack.stack
    tokens = expected_prompt_tokens(stack, 4)
    before = metrics(stack)
    engines = engines_by_replica(chaos_stack)
    with ThreadPoolExecutor(max_workers=8) as pool:
        streams, busiest = start_streams(pool, stack, 4)
        victim = engines[busiest]
        unaries = [pool.submit(unary, stack, kind, PROMPTS[6 + i])
                   for i, kind in enumerate(["chat", "completions"])]
        os.kill(victim.engine_pid, signal.SIGSTOP)
        try:
            results = [f.result(timeout=WAIT_S) for f in streams]
            responses = [f.result(timeout=WAIT_S) for f in unaries]
            during = metrics(stack)
        finally:
            os.kill(victim.engine_pid, signal.SIGCONT)
    for result, n in zip(results, tokens):
        assert_one_whole_stream(result, n)
    for resp in responses:
        assert_whole_response(resp)
    assert total(during, "cacheroute_failover_ejections_total", change="ejected") > \
        total(before, "cacheroute_failover_ejections_total", change="ejected")
    assert total(during, "cacheroute_failover_retries_total", reason="hung") > \
        total(before, "cacheroute_failover_retries_total", reason="hung")
    assert total(during, "cacheroute_failover_failed_total") == \
        total(before, "cacheroute_failover_failed_total")
    # Resumed: the hung engine had a stream under way.
    assert total(during, "cacheroute_failover_resumed_streams_total") > \
        total(before, "cacheroute_failover_resumed_streams_total")
    # Going again, the engine probes healthy and its replica rejoins the ring.
    wait_until(lambda: total(metrics(stack), "cacheroute_router_ejected_replicas") == 0,
               "the resumed replica to be readmitted", timeout_s=120)
    assert total(metrics(stack), "cacheroute_router_replicas") == 2


# The replica whose engine the crash test killed, for the recovery test after it.
CRASHED: dict[str, int] = {}


def test_crashed_engine_streams_resume_and_requests_retry(chaos_stack) -> None:
    stack = chaos_stack.stack
    # Prompts of its own: the hang test's prefixes are owned by the replica that
    # finished them.
    tokens = expected_prompt_tokens(stack, 6, offset=8)
    before = metrics(stack)
    engines = engines_by_replica(chaos_stack)
    with ThreadPoolExecutor(max_workers=10) as pool:
        streams, busiest = start_streams(pool, stack, 4, offset=8)
        victim = engines[busiest]
        CRASHED["replica_pid"] = victim.replica_pid
        os.kill(victim.engine_pid, signal.SIGKILL)
        # Sent after the crash, before Serve has replaced the replica: retried
        # before their first token wherever they land on the dead engine.
        late = threading.Semaphore(0)
        late_streams = [pool.submit(stream, stack, kind, PROMPTS[12 + i], late)
                        for i, kind in enumerate(["chat", "completions"])]
        unaries = [pool.submit(unary, stack, kind, PROMPTS[14 + i])
                   for i, kind in enumerate(["chat", "completions"])]
        results = [f.result(timeout=WAIT_S) for f in streams + late_streams]
        responses = [f.result(timeout=WAIT_S) for f in unaries]
    for result, n in zip(results, tokens):
        assert_one_whole_stream(result, n)
    for resp in responses:
        assert_whole_response(resp)
    after = metrics(stack)
    assert total(after, "cacheroute_failover_resumed_streams_total") > \
        total(before, "cacheroute_failover_resumed_streams_total")
    assert total(after, "cacheroute_failover_retries_total", phase="mid_stream") > \
        total(before, "cacheroute_failover_retries_total", phase="mid_stream")
    assert total(after, "cacheroute_failover_failed_total") == \
        total(before, "cacheroute_failover_failed_total")


def test_service_recovers_after_the_crash(chaos_stack) -> None:
    proc, stack = chaos_stack.proc, chaos_stack.stack
    crashed = CRASHED.get("replica_pid")
    assert crashed is not None, "runs after the crash test"

    # Serve's health check finds the dead engine and stops its replica (until then the
    # replica still counts as RUNNING, so /ready alone proves nothing), then starts and
    # warms a replacement.
    def replaced() -> bool:
        engines = engine_processes(proc.pid)
        return len(engines) == 2 and crashed not in {e.replica_pid for e in engines}

    def ready() -> bool:
        with stack.http() as http:
            return http.get("/ready").status_code == 200

    wait_until(replaced, "the crashed replica to be replaced", timeout_s=600, period_s=2.0)
    wait_until(ready, "/ready after the crash", timeout_s=600, period_s=2.0)
    wait_until(lambda: total(metrics(stack), "cacheroute_router_replicas") == 2
               and total(metrics(stack), "cacheroute_router_ejected_replicas") == 0,
               "both replicas on the ring", timeout_s=120)
    resp = unary(stack, "completions", PROMPTS[0])
    assert_whole_response(resp)
