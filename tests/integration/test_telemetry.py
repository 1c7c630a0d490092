"""Telemetry on the live stack: the app's /metrics scraped by a real Prometheus.

Debian's `prometheus` server runs on loopback with a 1 s scrape interval against
the service's `/metrics`; a few requests sharing a system prompt go through the
`openai` client; PromQL then reads the per-replica prefix-cache hit rate and the
router's decisions by outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import httpx
import pytest

from tests.integration.conftest import Stack, free_port

PROMETHEUS = shutil.which("prometheus")
SYSTEM = ("You are the support assistant of Telemetry Corp. Answer in one short sentence. "
          "Our opening hours are nine to five on weekdays. ") * 30


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PROMETHEUS is None:
        if os.environ.get("CACHEROUTE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail("prometheus is required (Debian package 'prometheus')")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    target = urlparse(stack.base_url).netloc
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: cacheroute\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prometheus did not start:\n" + (tmp / "prometheus.log").read_text())
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def query(prom: str, promql: str) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(prom: str, promql: str, ok, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(prom, promql)
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_app_metrics_endpoint_is_public_and_names_replicas(stack: Stack) -> None:
    # No API key: scrapers and probes reach /metrics like /ready.
    resp = httpx.get(f"{stack.base_url}/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert "cacheroute_router_decisions_total" in text
    assert 'cacheroute_replicas_wanted 2.0' in text


def by_replica(prom: str, promql: str) -> dict[str, float]:
    return {s["metric"]["replica"]: float(s["value"][1]) for s in query(prom, promql)}


def test_prometheus_shows_per_replica_hit_rate_and_router_outcomes(
        stack: Stack, prometheus: str) -> None:
    # Scraped at all, and both replicas' engine counters are in (the stack has served
    # earlier tests, so the counters start wherever those left them).
    up = wait_for(prometheus, 'up{job="cacheroute"}', lambda r: r and r[0]["value"][1] == "1")
    assert up and up[0]["value"][1] == "1", up
    hits_q, queries_q = ("sum by (replica) (vllm:prefix_cache_hits_total)",
                         "sum by (replica) (vllm:prefix_cache_queries_total)")
    wait_for(prometheus, queries_q, lambda r: len(r) == 2)
    hits0, queries0 = by_replica(prometheus, hits_q), by_replica(prometheus, queries_q)

    client = stack.client()
    for i in range(4):
        client.chat.completions.create(
            model=stack.model, max_tokens=2, temperature=0,
            messages=[{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": f"Telemetry question {i}?"}])

    # The per-replica hit rate as an operator queries it: one series per replica.
    hit_rate = wait_for(prometheus, f"{hits_q} / {queries_q}", lambda r: len(r) == 2)
    assert {s["metric"]["replica"] for s in hit_rate} == set(queries0), hit_rate
    assert all(0 <= float(s["value"][1]) <= 1 for s in hit_rate), hit_rate

    # Over these 4 requests alone, the replica that took the repeated system prompt
    # served most of its prompt tokens from cache (routing stats reach /metrics every
    # couple of seconds, hence the wait).
    def window_rates() -> dict[str, float]:
        hits, queries = by_replica(prometheus, hits_q), by_replica(prometheus, queries_q)
        return {r: (hits[r] - hits0.get(r, 0)) / (queries[r] - queries0.get(r, 0))
                for r in queries if queries[r] > queries0.get(r, 0)}

    deadline = time.monotonic() + 60
    while max(window_rates().values(), default=0) <= 0.5 and time.monotonic() < deadline:
        time.sleep(1)
    assert max(window_rates().values(), default=0) > 0.5, (window_rates(), hits0, queries0)

    outcomes = wait_for(prometheus, "sum by (outcome) (cacheroute_router_decisions_total)",
                        lambda r: any(s["metric"]["outcome"] == "owner_hit"
                                      and float(s["value"][1]) > 0 for s in r))
    by_outcome = {s["metric"]["outcome"]: float(s["value"][1]) for s in outcomes}
    assert by_outcome.get("owner_hit", 0) > 0, by_outcome
    # The bounded label set is exported whole, zeros included.
    assert {"owner_hit", "ring_home", "spill", "session", "failover", "no_key"} <= set(by_outcome)

    # The engines saw what the router predicted: cached tokens follow matched tokens.
    cached = query(prometheus, "sum(vllm:prompt_tokens_cached_total)")
    matched = query(prometheus, "sum(cacheroute_router_matched_tokens_total)")
    assert float(cached[0]["value"][1]) > 0 and float(matched[0]["value"][1]) > 0

    owned = query(prometheus, "sum(cacheroute_replica_owned_blocks)")
    assert float(owned[0]["value"][1]) > 0, owned
    kv = query(prometheus, "max(vllm:kv_cache_usage_perc)")
    assert 0 <= float(kv[0]["value"][1]) <= 1


def test_status_command_lists_every_replica(stack: Stack) -> None:
    import json
    import sys

    out = subprocess.run([sys.executable, "-m", "serving.cli", "status", "--url", stack.base_url,
                          "--json"], capture_output=True, text=True, timeout=60, check=True)
    state = json.loads(out.stdout)
    assert state["ready"]["status"] == "ready"
    replicas = state["replicas"]
    assert len(replicas) == 2 and all(r["up"] for r in replicas), replicas
    assert any((r["hit_rate"] or 0) > 0 for r in replicas), replicas
    table = subprocess.run([sys.executable, "-m", "serving.cli", "status", "--url",
                            stack.base_url], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert "hit rate" in table and all(r["replica"] in table for r in replicas)
