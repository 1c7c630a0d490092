"""Requests served per replica, read from the engines' own Prometheus counters.

`ray_vllm_request_success_total{ReplicaId=...}` counts finished requests per engine.
The difference of two scrapes (before and after a replay) gives each replica's share
of the trace; `load_skew` is max / mean over the replicas (1.0 = perfectly even).
Ray exports engine metrics every few seconds, so `settled` waits until two scrapes
agree before trusting a reading.
"""

from __future__ import annotations

import time

import httpx


def requests_by_replica(metrics_url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    text = httpx.get(metrics_url, timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "ray_vllm_request_success":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                rid = sample.labels.get("ReplicaId", "")
                counts[rid] = counts.get(rid, 0.0) + sample.value
    return counts


def settled(metrics_url: str, *, quiet_s: float = 3.0, timeout_s: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    last = requests_by_replica(metrics_url)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = requests_by_replica(metrics_url)
        if now == last:
            return now
        last = now
    return last


def load_skew(before: dict[str, float], after: dict[str, float], replicas: int) -> float | None:
    """max / mean of per-replica request counts between two scrapes."""
    deltas = [after[r] - before.get(r, 0.0) for r in after]
    deltas += [0.0] * max(0, replicas - len(deltas))
    total = sum(deltas)
    if total <= 0:
        return None
    return max(deltas) / (total / len(deltas))
