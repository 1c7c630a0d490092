"""The drill sequence end to end against a fake service (httpx.MockTransport) and a
fake cluster whose replica count follows ``set_replicas``: no Ray, no engine."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from chaos import DrillOptions, LoadSpec, StackTarget, Windows, run_drill
from chaos.cluster import INGRESS_DEPLOYMENT, ReplicaInfo
from tests.unit.chaos.chaos_fakes import chat_chunk, make_replica, sse

LLM = "LLMServer:m"
FAILOVER_METRICS = ("# TYPE cacheroute_failover_retries_total counter\n"
                    "cacheroute_failover_retries_total {retries}\n")


class FakeCluster:
    def __init__(self, replicas: int) -> None:
        self.count = replicas
        self.calls: list[int] = []

    def replicas(self) -> list[ReplicaInfo]:
        return [make_replica(f"r{i}", deployment=LLM) for i in range(self.count)] + [
            make_replica("ing", deployment=INGRESS_DEPLOYMENT)]

    def llm_deployment(self) -> str:
        return LLM

    def set_replicas(self, deployment: str, count: int) -> None:
        assert deployment == LLM
        self.calls.append(count)
        self.count = count


class FakeService:
    """Answers like the service: a cold first request per tenant prompt, cached after."""

    def __init__(self, *, failover: bool) -> None:
        self.failover = failover
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.retries = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/ready":
            return httpx.Response(200, json={"status": "ready", "replicas_ready": 2})
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake-model"}]})
        if path == "/metrics":
            self.retries += 1
            text = FAILOVER_METRICS.format(retries=self.retries) if self.failover else ""
            return httpx.Response(200, text=text)
        time.sleep(0.01)  # a service that takes time, so the load spans the drill
        body = json.loads(request.content)
        assert body["model"] == "fake-model"
        assert request.headers["authorization"] == "Bearer k"
        prefix = (body.get("messages") or [{"content": body.get("prompt")}])[0]["content"][:60]
        with self.lock:
            cached = 384 if prefix in self.seen else 0
            self.seen.add(prefix)
        usage = {"prompt_tokens": 460, "completion_tokens": 4,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        if body.get("stream"):
            return httpx.Response(200, text=sse(chat_chunk("hi"), chat_chunk("", usage=usage)))
        return httpx.Response(200, json={"id": "x", "choices": [{"index": 0}], "usage": usage})


def options(drill: str, **kw) -> DrillOptions:
    return DrillOptions(drill=drill,
                        load=LoadSpec(max_requests=5000, max_duration_s=20, concurrency=2),
                        windows=Windows(window_s=0.5, after_window_s=0.6, step_s=0.1),
                        fault_at_s=0.8, sample_period_s=0.05, ready_timeout_s=5,
                        recovery_timeout_s=10, **kw)


TARGET = StackTarget(base_url="http://svc", ray_address="fake:1", api_key="k")


@pytest.mark.parametrize(("drill", "after"), [("scale-up", 3), ("scale-down", 1)])
def test_scale_drill_runs_measures_and_restores(drill: str, after: int) -> None:
    cluster = FakeCluster(2)
    phases: list[str] = []
    report = run_drill(TARGET, options(drill), cluster=cluster,
                       transport=httpx.MockTransport(FakeService(failover=True)),
                       on_phase=phases.append)
    assert cluster.calls == [after, 2] and cluster.count == 2
    assert report["replicas"] == 2 and report["replicas_after"] == after
    assert report["sent"] == report["succeeded"] > 0 and report["failed"] == 0
    assert report["recovery_s"] is not None and report["fault"]["restored_to"] == 2
    assert report["fault"]["to_replicas"] == after
    assert report["hit_rate_before"] is not None and report["hit_rate_after"] is not None
    assert report["failover_counters"] is True and report["retried"] >= 1
    assert 0 < report["keys_moved_fraction"] < 1
    assert report["model"] == "fake-model" and report["samples"]
    assert any("recovered" in p for p in phases)
    json.dumps(report)


def test_no_failover_counters_read_zero() -> None:
    report = run_drill(TARGET, options("scale-up", restore=False), cluster=FakeCluster(2),
                       transport=httpx.MockTransport(FakeService(failover=False)))
    assert report["failover_counters"] is False
    assert (report["retried"], report["resumed_streams"]) == (0, 0)


def test_scale_down_of_one_replica_is_refused_before_any_load() -> None:
    from chaos import DrillError

    cluster = FakeCluster(1)
    with pytest.raises(DrillError, match="at least 2"):
        run_drill(TARGET, options("scale-down"), cluster=cluster,
                  transport=httpx.MockTransport(FakeService(failover=False)))
    assert cluster.calls == []
