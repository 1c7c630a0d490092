"""Prometheus recording and alerting rules, written twice from one definition.

`groups(STANDALONE)` is deploy/prometheus/rules.yml: the chart's default thresholds and
job `cacheroute` (the job name of deploy/prometheus/prometheus.yml). `groups(CHART)`
is the body of the chart's PrometheusRule template: the same rules with each threshold
a `.Values.prometheusRule` value and the job the release's full name (what the chart's
ServiceMonitor sets). Rendered with the default values under release name
`cacheroute`, the chart's rules equal the standalone file; tests/unit/serving/deploy/test_helm.py
checks that.

Every rule aggregates `by (namespace, job)`: one Prometheus may scrape several
releases, and outside Kubernetes the `namespace` label is simply absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from monitoring import metrics as m
from monitoring.promql import (
    aggregate,
    predicted_hit_rate,
    prediction_delivered_ratio,
    prefix_cache_hit_rate,
    quantile,
    selector,
    spill_ratio,
    sum_rate,
    token_hit_rate,
)

# The job deploy/prometheus/prometheus.yml scrapes the service as (and the chart's
# full name for release `cacheroute`).
LOCAL_JOB = "cacheroute"
WINDOW = "5m"
BY = ("namespace", "job")

# The chart's .Values.prometheusRule thresholds and their defaults (values.yaml holds
# the same; the chart-equals-file test fails when they differ).
DEFAULTS: dict[str, str | float] = {
    # Fewer replicas on the router's ring than configured for this long.
    "replicaDownFor": "10m",
    # Token hit rate (5m) below this for 30m.
    "minPrefixCacheHitRate": 0.2,
    # TTFT p99 (5m) above this many seconds for 15m.
    "maxTtftP99Seconds": 5,
    # A replica's KV-cache usage above this for 15m: preemptions evict cached prefixes.
    "maxKvCacheUsage": 0.9,
    # Share of decisions spilled past a full replica above this for 15m.
    "maxSpillRatio": 0.3,
    # A replica's delivered over predicted cached tokens (5m) below this for 15m. In
    # parity a predicted token goes undelivered mainly when its block is evicted between
    # the engine's removal and the router applying that KV event, a small share even
    # under churn; when the router's tokens or block hashes drift from the engine's,
    # predictions stop matching anything the engine holds and the ratio falls towards
    # 0. Half sits between the two: a drift that costs at least half the predicted hits
    # fires, churn does not.
    "minPredictionDeliveredRatio": 0.5,
    # ... while the router predicts at least this many cached tokens/s on that replica:
    # 15,000 tokens in the 5m window, over three times the longest prompt the default
    # max_model_len (4,096) admits, so no single request's loss decides the ratio.
    "minPredictedCachedTokensRate": 50,
}

TOKEN_HIT_RATE = "cacheroute:token_hit_rate:ratio_rate5m"
PREFIX_CACHE_HIT_RATE = "cacheroute:prefix_cache_hit_rate:ratio_rate5m"
REPLICA_PREFIX_CACHE_HIT_RATE = "cacheroute:replica_prefix_cache_hit_rate:ratio_rate5m"
PREDICTED_HIT_RATE = "cacheroute:router_predicted_hit_rate:ratio_rate5m"
DECISIONS_RATE = "cacheroute:router_decisions:rate5m"
SPILL_RATIO = "cacheroute:router_spill:ratio_rate5m"
PREDICTION_DELIVERED = "cacheroute:prediction_delivered:ratio_rate5m"
REPLICA_PREDICTION_DELIVERED = "cacheroute:replica_prediction_delivered:ratio_rate5m"
REPLICA_PREDICTED_CACHED_TOKENS = "cacheroute:replica_predicted_cached_tokens:rate5m"
TTFT_P50 = "cacheroute:ttft_seconds:p50_rate5m"
TTFT_P99 = "cacheroute:ttft_seconds:p99_rate5m"


@dataclass(frozen=True)
class Flavour:
    """How one output spells what differs between the file and the chart."""

    job: str
    value: Callable[[str], str]  # the text standing for a threshold value
    action: Callable[[str], str]  # an alert-template action, e.g. "$value | humanize"


def _number(key: str) -> str:
    v = DEFAULTS[key]
    return f"{v:g}" if isinstance(v, (int, float)) else v


STANDALONE = Flavour(job=LOCAL_JOB, value=_number, action=lambda a: f"{{{{ {a} }}}}")
# Helm would expand an alert's {{ $value }} itself: emit it as a raw-string literal.
CHART = Flavour(job="{{ $job }}", value=lambda k: f"{{{{ $r.{k} }}}}",
                action=lambda a: f"{{{{`{{{{ {a} }}}}`}}}}")


def _record(name: str, expr: str) -> dict:
    return {"record": name, "expr": expr}


def _alert(name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description}}


def recording_rules(f: Flavour) -> list[dict]:
    sel = f'job="{f.job}"'
    return [
        _record(TOKEN_HIT_RATE, token_hit_rate(sel, WINDOW, by=BY)),
        _record(PREFIX_CACHE_HIT_RATE, prefix_cache_hit_rate(sel, WINDOW, by=BY)),
        _record(REPLICA_PREFIX_CACHE_HIT_RATE,
                prefix_cache_hit_rate(sel, WINDOW, by=(*BY, "replica"))),
        _record(PREDICTED_HIT_RATE, predicted_hit_rate(sel, WINDOW, by=BY)),
        _record(DECISIONS_RATE, sum_rate(m.ROUTER_DECISIONS, sel, WINDOW, by=(*BY, "outcome"))),
        _record(SPILL_RATIO, spill_ratio(sel, WINDOW, by=BY)),
        _record(PREDICTION_DELIVERED, prediction_delivered_ratio(sel, WINDOW, by=BY)),
        _record(REPLICA_PREDICTION_DELIVERED,
                prediction_delivered_ratio(sel, WINDOW, by=(*BY, "replica"))),
        _record(REPLICA_PREDICTED_CACHED_TOKENS,
                sum_rate(m.PREDICTED_CACHED_TOKENS, sel, WINDOW, by=(*BY, "replica"))),
        _record(TTFT_P50, quantile(0.5, m.TTFT_SECONDS, sel, WINDOW, by=BY)),
        _record(TTFT_P99, quantile(0.99, m.TTFT_SECONDS, sel, WINDOW, by=BY)),
    ]


def availability_alerts(f: Flavour) -> list[dict]:
    sel = f'job="{f.job}"'
    up = selector(m.UP, sel)
    ring = selector(m.ROUTER_REPLICAS, sel)
    a = f.action
    return [
        _alert("CacheRouteTargetDown", f"{up} == 0\nor\nabsent({up})", "5m", "critical",
               "cacheroute's metrics endpoint is down or not scraped",
               f"Prometheus got no metrics from job {f.job} for 5 minutes: the ingress "
               f"(which serves /metrics on the API port) is down, or nothing scrapes it "
               f"(scrape config or ServiceMonitor missing). The other alerts are blind "
               f"meanwhile."),
        _alert("CacheRouteNoHealthyReplicas", f"{ring} == 0", "5m", "critical",
               "No engine replica on the router's ring",
               f"The router of {a('$labels.job')} has had no replica to route to for 5 "
               f"minutes: every request fails."),
        _alert("CacheRouteReplicaDown", f"{ring}\n<\n{selector(m.REPLICAS_WANTED, sel)}",
               f.value("replicaDownFor"), "warning",
               "cacheroute has fewer replicas than configured",
               f"{a('$value')} replicas are on the ring of {a('$labels.job')}, fewer than "
               f"configured: /ready answers 503 until all are back, and prefixes the "
               f"missing replicas held are prefilled again elsewhere."),
    ]


def performance_alerts(f: Flavour) -> list[dict]:
    sel = f'job="{f.job}"'
    a, v = f.action, f.value
    return [
        _alert("CacheRoutePrefixCacheHitRateLow",
               f"{selector(TOKEN_HIT_RATE, sel)} < {v('minPrefixCacheHitRate')}", "30m",
               "warning", "Prefix-cache hit rate is low",
               f"Only {a('$value | humanizePercentage')} of prompt tokens were served from "
               f"the engines' prefix caches (threshold {v('minPrefixCacheHitRate')}, for "
               f"30m). Check that routing.policy is cacheroute, that KV events reach the "
               f"router (router dashboard), and whether the workload repeats prefixes."),
        _alert("CacheRouteTTFTP99High",
               f"{selector(TTFT_P99, sel)} > {v('maxTtftP99Seconds')}", "15m", "warning",
               "Time to first token p99 is high",
               f"The p99 time to first token is {a('$value | humanizeDuration')} "
               f"(threshold {v('maxTtftP99Seconds')}s): replicas are saturated or "
               f"prefixes are prefilled again."),
        _alert("CacheRouteKVCacheNearlyFull",
               f"{aggregate('max', m.KV_CACHE_USAGE, sel, by=(*BY, 'replica'))}\n"
               f"> {v('maxKvCacheUsage')}", "15m", "warning",
               "An engine replica's KV cache is nearly full",
               f"Replica {a('$labels.replica')} uses {a('$value | humanizePercentage')} of "
               f"its KV cache (threshold {v('maxKvCacheUsage')}): it preempts requests and "
               f"evicts cached prefixes. Add replicas or KV memory, or lower max_num_seqs."),
        _alert("CacheRouteSpillRateHigh",
               f"{selector(SPILL_RATIO, sel)} > {v('maxSpillRatio')}", "15m", "warning",
               "Many requests spill past their cache-holding replica",
               f"{a('$value | humanizePercentage')} of routing decisions went past a "
               f"replica at its load cap (threshold {v('maxSpillRatio')}): cache affinity "
               f"is traded for load. Add replicas or raise routing.load_epsilon."),
        _alert("CacheRouteRoutingPredictionDiverged",
               f"{selector(REPLICA_PREDICTION_DELIVERED, sel)} < "
               f"{v('minPredictionDeliveredRatio')}\nand\n"
               f"{selector(REPLICA_PREDICTED_CACHED_TOKENS, sel)} > "
               f"{v('minPredictedCachedTokensRate')}", "15m", "warning",
               "The router predicts cache hits the engine does not deliver",
               f"Replica {a('$labels.replica')} served only "
               f"{a('$value | humanizePercentage')} of the prompt tokens the router "
               f"predicted it held (threshold {v('minPredictionDeliveredRatio')}, for 15m, "
               f"while the router predicts over {v('minPredictedCachedTokensRate')} "
               f"tokens/s there). In parity, predicted tokens are lost mainly to evictions "
               f"racing the KV events; this much means the router's tokens or block hashes "
               f"differ from the engine's, and requests are routed for hits that do not "
               f"happen. Check the chat template and tokenizer, engine.block_size against "
               f"the engine's own block size, and the hash seed and algorithm "
               f"(docs/operations/metrics.md)."),
    ]


def groups(f: Flavour) -> list[dict]:
    return [
        {"name": "cacheroute.recording", "rules": recording_rules(f)},
        {"name": "cacheroute.availability", "rules": availability_alerts(f)},
        {"name": "cacheroute.performance", "rules": performance_alerts(f)},
    ]
