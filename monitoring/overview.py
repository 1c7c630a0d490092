"""Dashboard "cacheroute / overview": is the service up, fast, and reusing its caches?

Fleet-wide numbers only; per-replica detail is in `replicas`, the router's reasons in
`decisions`.
"""

from __future__ import annotations

from monitoring import metrics as m
from monitoring.panels import RATE, Board, Query, stat, timeseries
from monitoring.promql import (
    aggregate,
    prefix_cache_hit_rate,
    quantile,
    sum_rate,
    token_hit_rate,
)
from monitoring.rules import DEFAULTS
from monitoring.scope import JOB, job_variable, membership_annotation

# The stat panels turn red where the alerts' default thresholds are.
MIN_HIT_RATE = float(DEFAULTS["minPrefixCacheHitRate"])
MAX_TTFT_P99_S = float(DEFAULTS["maxTtftP99Seconds"])


def build() -> Board:
    requests = sum_rate(m.REQUEST_SUCCESS, JOB, RATE)
    ring = aggregate("sum", m.ROUTER_REPLICAS, JOB)
    wanted = aggregate("sum", m.REPLICAS_WANTED, JOB)
    board = Board(
        "overview", "cacheroute / overview",
        "Requests, time to first token, prefix-cache reuse and replica count of one "
        "cacheroute deployment (job).",
        [job_variable()], [membership_annotation()])
    board.row("Service").add(
        stat("Requests/s", "Requests the engines completed per second.", "reqps",
             [Query(requests, "completed")]),
        stat("Token hit rate", "Share of prompt tokens served from the engines' prefix "
             "caches (vllm:prompt_tokens_cached / vllm:prompt_tokens).", "percentunit",
             [Query(token_hit_rate(JOB, RATE), "hit rate")], red_below=MIN_HIT_RATE),
        stat("TTFT p99", "99th percentile time to first token over all replicas.", "s",
             [Query(quantile(0.99, m.TTFT_SECONDS, JOB, RATE), "p99")], red_above=MAX_TTFT_P99_S),
        stat("Replicas: ring / wanted", "Replicas on the router's ring and replicas the "
             "config asks for; fewer on the ring means a replica is down.", "short",
             [Query(ring, "on ring"), Query(wanted, "wanted")]),
    )
    board.row("Traffic").add(
        timeseries("Requests/s", "Requests routed by the router (one decision each, plus "
                   "one per failover retry) and requests the engines completed.", "reqps",
                   [Query(sum_rate(m.ROUTER_DECISIONS, JOB, RATE), "routed"),
                    Query(requests, "completed")]),
        timeseries("Tokens/s", "Prompt tokens prefilled, prompt tokens served from the "
                   "prefix cache, and generated tokens.", "short",
                   [Query(sum_rate(m.PROMPT_TOKENS, JOB, RATE), "prompt"),
                    Query(sum_rate(m.PROMPT_TOKENS_CACHED, JOB, RATE), "prompt, cached"),
                    Query(sum_rate(m.GENERATION_TOKENS, JOB, RATE), "generated")]),
    )
    board.row("Latency").add(
        timeseries("Time to first token", "p50 and p99 over all replicas (the histograms "
                   "summed by bucket before the quantile).", "s",
                   [Query(quantile(0.5, m.TTFT_SECONDS, JOB, RATE), "p50"),
                    Query(quantile(0.99, m.TTFT_SECONDS, JOB, RATE), "p99")], min_value=0),
        timeseries("End-to-end request latency", "p50 and p99 over all replicas.", "s",
                   [Query(quantile(0.5, m.E2E_SECONDS, JOB, RATE), "p50"),
                    Query(quantile(0.99, m.E2E_SECONDS, JOB, RATE), "p99")], min_value=0),
    )
    board.row("Prefix cache and replicas").add(
        timeseries("Prefix-cache hit rate", "Prompt tokens served from cache over prompt "
                   "tokens of finished requests, and the engines' prefix-cache hits over "
                   "lookups (in tokens; counts re-lookups after preemption too).",
                   "percentunit",
                   [Query(token_hit_rate(JOB, RATE), "prompt tokens cached / prompt tokens"),
                    Query(prefix_cache_hit_rate(JOB, RATE), "prefix-cache hits / queries")],
                   min_value=0, max_value=1),
        timeseries("Replicas up vs wanted", "Replicas on the router's ring, replicas "
                   "reporting engine metrics, and the configured count.", "short",
                   [Query(ring, "on ring"),
                    Query(f"count({aggregate('max', m.KV_CACHE_USAGE, JOB, by=('replica',))})",
                          "reporting"),
                    Query(wanted, "wanted")], min_value=0),
    )
    return board
