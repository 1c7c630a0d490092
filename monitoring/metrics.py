"""The metrics interface the dashboards and rules are built on: one entry per metric.

Every series comes from one scrape target, the ingress process's own
`http://HOST:8000/metrics`: the router's process-local counters, and each engine
replica's telemetry re-exported under vLLM's own names with a `replica` label (the
Serve replica id). PromQL in this package names metrics only through these constants,
and tests/unit/monitoring/test_dashboards.py fails on any name that is not listed here, so a
renamed metric breaks the build instead of leaving a panel silently empty.

`CATALOGUE` is what the dashboards and rules use; `UNCHARTED` the rest of what the
app exports. Together they are every metric serving/ declares
(serving/observability/metrics.py), with the same kind and labels:
tests/unit/monitoring/test_catalogue.py compares them, so a metric added, renamed or
relabelled in serving/ fails the build until this file says the same. A query that
filters or groups by a label its metric lacks fails when it is built (promql.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from router.outcome import Outcome


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


# Labels the scrape adds to every series (namespace and pod in Kubernetes).
SCRAPE_LABELS = frozenset({"job", "instance", "namespace", "pod"})


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed: a counter's ends in _total
    kind: Kind
    # Labels besides those the scrape adds (SCRAPE_LABELS).
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
# Per attempt whose usage reported cached tokens, by the replica and outcome of its
# decision: the tokens the router predicted cached there, and the tokens the engine
# served from cache (serving/observability/route_accuracy.py). Counted for the same
# attempts, so their ratio is the router's accuracy.
PREDICTED_CACHED_TOKENS = Metric("cacheroute_predicted_cached_tokens_total", Kind.COUNTER,
                                 ("replica", "outcome"))
DELIVERED_CACHED_TOKENS = Metric("cacheroute_delivered_cached_tokens_total", Kind.COUNTER,
                                 ("replica", "outcome"))

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
    PREDICTED_CACHED_TOKENS, DELIVERED_CACHED_TOKENS,
    PREFIX_CACHE_QUERIES, PREFIX_CACHE_HITS, PROMPT_TOKENS, PROMPT_TOKENS_CACHED,
    GENERATION_TOKENS, REQUEST_SUCCESS, KV_CACHE_USAGE, REQUESTS_RUNNING, REQUESTS_WAITING,
    TTFT_SECONDS, E2E_SECONDS, REPLICA_OWNED_BLOCKS, REPLICA_IN_FLIGHT, REPLICA_BLOCKS_REMOVED,
    UP,
)

# -- exported, on no dashboard or rule yet -----------------------------------------------
# A panel or rule that uses one of these moves it into CATALOGUE (test_dashboards.py
# accepts only CATALOGUE's names in queries).
ROUTER_SPILL_WAITS = Metric("cacheroute_router_spill_waits_total", Kind.COUNTER, ("result",))
ROUTER_EJECTED_REPLICAS = Metric("cacheroute_router_ejected_replicas", Kind.GAUGE)
REPLICA_UP = Metric("cacheroute_replica_up", Kind.GAUGE, ("replica",))
FAILOVER_RETRIES = Metric("cacheroute_failover_retries_total", Kind.COUNTER,
                          ("reason", "phase"))
FAILOVER_RESUMED_STREAMS = Metric("cacheroute_failover_resumed_streams_total", Kind.COUNTER)
FAILOVER_FAILED = Metric("cacheroute_failover_failed_total", Kind.COUNTER, ("reason",))
FAILOVER_EJECTIONS = Metric("cacheroute_failover_ejections_total", Kind.COUNTER, ("change",))
PREWARM_SENT = Metric("cacheroute_prewarm_sent_total", Kind.COUNTER)
PREWARM_PREFIXES = Metric("cacheroute_prewarm_prefixes_total", Kind.COUNTER, ("result",))
PREWARM_REPLICAS = Metric("cacheroute_prewarm_replicas_total", Kind.COUNTER)
PREWARM_SECONDS = Metric("cacheroute_prewarm_seconds", Kind.HISTOGRAM)
REPLICATIONS = Metric("cacheroute_replications_total", Kind.COUNTER, ("result",))
PREFIX_HITS = Metric("cacheroute_prefix_hits_total", Kind.COUNTER)
PREFIX_MISSES = Metric("cacheroute_prefix_misses_total", Kind.COUNTER)
PREFIX_REWARMS = Metric("cacheroute_prefix_rewarms_total", Kind.COUNTER)
PREFIXES_REGISTERED = Metric("cacheroute_prefixes_registered", Kind.GAUGE)
DOCUMENTS = Metric("cacheroute_documents", Kind.GAUGE)
DOCUMENT_PROMPT_TOKENS = Metric("cacheroute_document_prompt_tokens_total", Kind.COUNTER,
                                ("order",))
DOCUMENT_CACHED_TOKENS = Metric("cacheroute_document_cached_tokens_total", Kind.COUNTER,
                                ("order",))
DOCUMENT_ASSEMBLY_SECONDS = Metric("cacheroute_document_assembly_seconds", Kind.HISTOGRAM,
                                   ("order",))
DOCUMENT_ASK_SECONDS = Metric("cacheroute_document_ask_seconds", Kind.HISTOGRAM, ("order",))
DOCUMENT_UPLOAD_SECONDS = Metric("cacheroute_document_upload_seconds", Kind.HISTOGRAM)
DOCUMENT_EVICTIONS = Metric("cacheroute_document_evictions_total", Kind.COUNTER, ("reason",))
# Requests the ingress's admission limits refused (`rate`, `tenant_concurrency`,
# `ingress_concurrency`); no tenant label, /metrics is public.
INGRESS_REFUSED = Metric("cacheroute_ingress_refused_requests_total", Kind.COUNTER,
                         ("reason",))

UNCHARTED: tuple[Metric, ...] = (
    ROUTER_SPILL_WAITS, ROUTER_EJECTED_REPLICAS, REPLICA_UP,
    FAILOVER_RETRIES, FAILOVER_RESUMED_STREAMS, FAILOVER_FAILED, FAILOVER_EJECTIONS,
    PREWARM_SENT, PREWARM_PREFIXES, PREWARM_REPLICAS, PREWARM_SECONDS, REPLICATIONS,
    PREFIX_HITS, PREFIX_MISSES, PREFIX_REWARMS, PREFIXES_REGISTERED,
    DOCUMENTS, DOCUMENT_PROMPT_TOKENS, DOCUMENT_CACHED_TOKENS, DOCUMENT_ASSEMBLY_SECONDS,
    DOCUMENT_ASK_SECONDS, DOCUMENT_UPLOAD_SECONDS, DOCUMENT_EVICTIONS, INGRESS_REFUSED,
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
