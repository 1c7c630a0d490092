"""Did any replica restart? Evidence from the live stack's own metrics.

Serve gives a replacement replica a new replica id, so a restart shows as a changed
id set in two independent places:
- `cacheroute_replica_up` on the app's /metrics: the replicas the router may use;
- Ray's export (`Stack.metrics_url`): Serve's `serve_deployment_replica_starts`
  counter per deployment (ingress included), and the engines' finished-request
  counters by `ReplicaId`, which must only grow (an engine that restarted inside its
  replica would start again from zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Stack

REPLICA_STARTS = "ray_serve_deployment_replica_starts"
ENGINE_REQUESTS = "ray_vllm_request_success"


@dataclass(frozen=True)
class ReplicaSnapshot:
    routable: frozenset[str]
    starts: dict[str, float]  # deployment -> replica starts
    engine_requests: dict[str, float]  # ReplicaId -> finished requests


def _samples(url: str, family_name: str):
    text = httpx.get(url, timeout=60).text
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            yield from family.samples


def snapshot(stack: Stack) -> ReplicaSnapshot:
    routable = frozenset(
        s.labels["replica"] for s in _samples(f"{stack.base_url}/metrics", "cacheroute_replica_up")
        if s.value == 1)
    starts: dict[str, float] = {}
    for s in _samples(stack.metrics_url, REPLICA_STARTS):
        if s.name.endswith("_total"):
            key = s.labels.get("deployment", "")
            starts[key] = starts.get(key, 0.0) + s.value
    return ReplicaSnapshot(routable, starts, stack.requests_by_replica())


def assert_no_restart(before: ReplicaSnapshot, after: ReplicaSnapshot) -> None:
    assert before.routable and after.routable == before.routable, (before, after)
    for deployment, count in before.starts.items():
        assert after.starts.get(deployment) == count, (deployment, before.starts, after.starts)
    assert set(after.engine_requests) == set(before.engine_requests), (before, after)
    for replica, count in before.engine_requests.items():
        assert after.engine_requests[replica] >= count, (replica, before, after)
