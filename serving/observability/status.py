"""`cacheroute status`: one table of the running service's replicas.

Reads the service's own endpoints -- `GET /ready` (readiness) and `GET /metrics`
(serving/observability/telemetry.py) -- so it shows what Prometheus would, without one:

    replica   health  hit rate  KV used  running  waiting  in flight  owned blocks
    3f2a9c1d  up         87.5%    12.0%        1        0          1            42

Hit rate is the engine's cumulative prefix-cache hits / queries since the replica
started. A replica is `up` while the router may route to it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class ReplicaStatus:
    replica: str
    up: bool
    hit_rate: float | None
    kv_cache_usage: float | None
    running: int | None
    waiting: int | None
    in_flight: int | None
    owned_blocks: int | None
    requests: int | None


_FIELDS = {
    "vllm:prefix_cache_queries_total": "queries",
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:request_success_total": "requests",
    "cacheroute_replica_in_flight": "in_flight",
    "cacheroute_replica_owned_blocks": "owned_blocks",
    "cacheroute_replica_up": "up",
}


def parse_replicas(metrics_text: str) -> list[ReplicaStatus]:
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            key = _FIELDS.get(s.name)
            replica = s.labels.get("replica")
            if key is not None and replica is not None:
                values.setdefault(replica, {})[key] = s.value

    def as_int(v: float | None) -> int | None:
        return None if v is None else int(v)

    out = []
    for replica in sorted(values):
        v = values[replica]
        queries = v.get("queries")
        out.append(ReplicaStatus(
            replica=replica,
            up=v.get("up") == 1.0,
            hit_rate=(v.get("hits", 0.0) / queries) if queries else None,
            kv_cache_usage=v.get("kv_cache_usage"),
            running=as_int(v.get("running")),
            waiting=as_int(v.get("waiting")),
            in_flight=as_int(v.get("in_flight")),
            owned_blocks=as_int(v.get("owned_blocks")),
            requests=as_int(v.get("requests")),
        ))
    return out


def format_table(replicas: Iterable[ReplicaStatus]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v: int | None) -> str:
        return "-" if v is None else str(v)

    header = ("replica", "health", "hit rate", "KV used", "running", "waiting", "in flight",
              "owned blocks", "requests")
    rows = [header] + [
        (r.replica, "up" if r.up else "down", pct(r.hit_rate), pct(r.kv_cache_usage),
         num(r.running), num(r.waiting), num(r.in_flight), num(r.owned_blocks), num(r.requests))
        for r in replicas]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fetch(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Readiness and replica table of the service at `url` (raises httpx.HTTPError)."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s) as client:
        ready = client.get("/ready")
        metrics = client.get("/metrics")
        metrics.raise_for_status()
    try:
        readiness = ready.json()
    except ValueError:
        readiness = {"status": f"HTTP {ready.status_code}"}
    return {"ready": readiness, "replicas": parse_replicas(metrics.text)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="service URL (default: http://127.0.0.1:<server.port> "
                                 "of --config)")
    p.add_argument("--config", help="YAML config whose server.port to read")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from serving.config import load_config
    from serving.runtime import base_url

    url = args.url or base_url(load_config(args.config))
    try:
        state = fetch(url)
    except httpx.HTTPError as err:
        raise RuntimeError(f"cannot read status from {url}: {err}") from None
    if args.json:
        print(json.dumps({"ready": state["ready"],
                          "replicas": [asdict(r) for r in state["replicas"]]}, indent=2))
        return 0
    ready = state["ready"]
    print(f"{url}: {ready.get('status', '?')} "
          f"({ready.get('replicas_ready', '?')}/{ready.get('replicas_wanted', '?')} replicas ready)")
    print(format_table(state["replicas"]) if state["replicas"]
          else "no replica telemetry yet (the router reports replicas after its first request)")
    return 0
