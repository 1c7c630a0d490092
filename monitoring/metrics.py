"""The metrics interface the dashboards and rules are built on: one entry per metric.

Every series comes from one scrape target, the ingress process's own
`http://HOST:8000/metrics`: the router's process-local counters, and each engine
replica's telemetry re-exported under vLLM's own names with a `replica` label (the
Serve replica id). PromQL in this package names metrics only through these constants,
and tests/unit/monitoring/test_dashboards.py fails on any name that is not listed here, so a
renamed metric breaks the build instead of leaving a panel silently empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from router.outcome import Outcome


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    # Labels besides those the scrape adds (job, instance; namespace, pod in Kubernetes).
    labels: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name

    @property
    def bucket(self) -> str:
        assert self.kind is Kind.HISTOGRAM, self.name
        return f"{self.name}_bucket"


# Bounded label values (each is an enum or a fixed set in serving/).
OUTCOMES = tuple(o.value for o in Outcome)
STAGES = ("tokenize", "decide")
MEMBERSHIP_CHANGES = ("added", "removed")
KV_EVENT_KINDS = ("stored", "removed", "cleared")

# -- the router, in the ingress process ---------------------------------------------------
ROUTER_DECISIONS = Metric("cacheroute_router_decisions_total", Kind.COUNTER, ("outcome",))
# Prompt tokens the router predicted cached on the replica it chose.
ROUTER_MATCHED_TOKENS = Metric("cacheroute_router_matched_tokens_total", Kind.COUNTER)
ROUTER_PROMPT_TOKENS = Metric("cacheroute_router_prompt_tokens_total", Kind.COUNTER)
ROUTER_DECISION_SECONDS = Metric("cacheroute_router_decision_seconds", Kind.HISTOGRAM, ("stage",))
ROUTER_REPLICAS = Metric("cacheroute_router_replicas", Kind.GAUGE)
REPLICAS_WANTED = Metric("cacheroute_replicas_wanted", Kind.GAUGE)
ROUTER_MEMBERSHIP_CHANGES = Metric("cacheroute_router_membership_changes_total", Kind.COUNTER,
                                   ("change",))
ROUTER_KV_EVENTS = Metric("cacheroute_router_kv_events_total", Kind.COUNTER, ("kind",))

# -- per engine replica (label `replica`) ------------------------------------------------
# Prefix-cache lookups and hits, in tokens, as the engine's scheduler counts them.
PREFIX_CACHE_QUERIES = Metric("vllm:prefix_cache_queries_total", Kind.COUNTER, ("replica",))
PREFIX_CACHE_HITS = Metric("vllm:prefix_cache_hits_total", Kind.COUNTER, ("replica",))
PROMPT_TOKENS = Metric("vllm:prompt_tokens_total", Kind.COUNTER, ("replica",))
# Prompt tokens of finished requests served from the prefix cache (what clients see as
# usage.prompt_tokens_details.cached_tokens).
PROMPT_TOKENS_CACHED = Metric("vllm:prompt_tokens_cached_total", Kind.COUNTER, ("replica",))
GENERATION_TOKENS = Metric("vllm:generation_tokens_total", Kind.COUNTER, ("replica",))
REQUEST_SUCCESS = Metric("vllm:request_success_total", Kind.COUNTER, ("replica",))
KV_CACHE_USAGE = Metric("vllm:kv_cache_usage_perc", Kind.GAUGE, ("replica",))  # 0..1
REQUESTS_RUNNING = Metric("vllm:num_requests_running", Kind.GAUGE, ("replica",))
REQUESTS_WAITING = Metric("vllm:num_requests_waiting", Kind.GAUGE, ("replica",))
TTFT_SECONDS = Metric("vllm:time_to_first_token_seconds", Kind.HISTOGRAM, ("replica",))
E2E_SECONDS = Metric("vllm:e2e_request_latency_seconds", Kind.HISTOGRAM, ("replica",))
# Blocks the router's ownership index attributes to the replica.
REPLICA_OWNED_BLOCKS = Metric("cacheroute_replica_owned_blocks", Kind.GAUGE, ("replica",))
REPLICA_IN_FLIGHT = Metric("cacheroute_replica_in_flight", Kind.GAUGE, ("replica",))
# Evictions seen in the replica's KV events.
REPLICA_BLOCKS_REMOVED = Metric("cacheroute_replica_kv_blocks_removed_total", Kind.COUNTER,
                                ("replica",))

# Prometheus's own per-target series.
UP = Metric("up", Kind.GAUGE)

CATALOGUE: tuple[Metric, ...] = (
    ROUTER_DECISIONS, ROUTER_MATCHED_TOKENS, ROUTER_PROMPT_TOKENS, ROUTER_DECISION_SECONDS,
    ROUTER_REPLICAS, REPLICAS_WANTED, ROUTER_MEMBERSHIP_CHANGES, ROUTER_KV_EVENTS,
    PREFIX_CACHE_QUERIES, PREFIX_CACHE_HITS, PROMPT_TOKENS, PROMPT_TOKENS_CACHED,
    GENERATION_TOKENS, REQUEST_SUCCESS, KV_CACHE_USAGE, REQUESTS_RUNNING, REQUESTS_WAITING,
    TTFT_SECONDS, E2E_SECONDS, REPLICA_OWNED_BLOCKS, REPLICA_IN_FLIGHT, REPLICA_BLOCKS_REMOVED,
    UP,
)


def series_names() -> frozenset[str]:
    """Every series name a query may use (histograms as _bucket, _sum and _count)."""
    names: set[str] = set()
    for m in CATALOGUE:
        if m.kind is Kind.HISTOGRAM:
            names.update(f"{m.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(m.name)
    return frozenset(names)
