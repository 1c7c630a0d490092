"""Reading the service over HTTP: readiness and the failover counters on ``/metrics``.

``/ready`` answers 200 when every configured replica is running and 503 otherwise,
both with ``replicas_ready`` (serving/ingress/ingress.py). The failover counters are the
service's own count of what it hid from clients: requests it retried on another
replica, streams it resumed, and requests it gave up on. A service without
failover exports none of them; the drill then reports 0 and says so
(``failover_counters``: false) rather than guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

# Sample names (with the counter's `_total` suffix) -> report key.
FAILOVER_COUNTERS: Mapping[str, str] = {
    "cacheroute_failover_retries_total": "retried",
    "cacheroute_failover_resumed_streams_total": "resumed_streams",
    "cacheroute_failover_failed_total": "failover_failed",
}
# Short: a probe that hangs delays the sample, and so the recovery time's resolution.
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, kw_only=True)
class ReadyState:
    status: int | None  # None: no answer
    replicas_ready: int | None

    @property
    def ready(self) -> bool:
        return self.status == 200


def read_ready(client: httpx.Client) -> ReadyState:
    try:
        resp = client.get("/ready", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return ReadyState(status=None, replicas_ready=None)
    try:
        count = resp.json().get("replicas_ready")
    except (ValueError, AttributeError):
        count = None
    return ReadyState(status=resp.status_code, replicas_ready=count)


def parse_failover_counters(text: str) -> dict[str, float] | None:
    """Report key -> value summed over labels; None when no failover counter is exported."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = FAILOVER_COUNTERS.get(sample.name)
            if key is not None:
                found[key] = found.get(key, 0.0) + sample.value
    return found or None


def read_failover_counters(client: httpx.Client) -> dict[str, float] | None:
    try:
        resp = client.get("/metrics", timeout=PROBE_TIMEOUT_S)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_failover_counters(resp.text)


def counter_deltas(before: Mapping[str, float] | None,
                   after: Mapping[str, float] | None) -> dict[str, int]:
    """What the counters rose by during the drill; 0 for a counter that is absent.
    A restarted ingress starts its counters at 0 again: a fall counts as the new value."""
    out = {}
    for key in FAILOVER_COUNTERS.values():
        b = (before or {}).get(key, 0.0)
        a = (after or {}).get(key, 0.0)
        out[key] = round(a - b if a >= b else a)
    return out


def read_in_flight(client: httpx.Client) -> dict[str, float]:
    """The router's in-flight count per replica id (empty when unreadable)."""
    from bench.service_metrics import parse_metrics

    try:
        resp = client.get("/metrics", timeout=PROBE_TIMEOUT_S)
        resp.raise_for_status()
    except httpx.HTTPError:
        return {}
    return dict(parse_metrics(resp.text).in_flight)
