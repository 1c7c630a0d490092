"""Dashboard "cacheroute / router": why requests went where they went.

Each routing decision carries one outcome (router/outcome.py): many `spill`s mean the
load bound is too tight for the fleet; `ring_home` dominating a repetitive workload
means the ownership index misses prefixes it should know; `failover` comes with
replicas leaving. The router's predicted hit rate (matched tokens) should track the
engines' real one (cached tokens); a gap means the index is stale. Per replica, the
cached tokens predicted for a request against those its engine delivered (the same
requests on both sides) show a router whose tokens or block hashes drifted from the
engine's: predicted far above delivered (`CacheRouteRoutingPredictionDiverged`).
"""

from __future__ import annotations

from monitoring import metrics as m
from monitoring.panels import RATE, Board, Query, timeseries
from monitoring.promql import (
    aggregate,
    predicted_hit_rate,
    prediction_delivered_ratio,
    quantile,
    spill_ratio,
    sum_increase,
    sum_rate,
    token_hit_rate,
)
from monitoring.scope import JOB, job_variable, membership_annotation
from router.outcome import Outcome

FAILOVER = f'outcome="{Outcome.FAILOVER.value}"'


def build() -> Board:
    by_outcome = sum_rate(m.ROUTER_DECISIONS, JOB, RATE, by=("outcome",))
    board = Board(
        "router", "cacheroute / router",
        "The cache-aware router's decisions by outcome, its predicted against the engines' "
        "real cache hits, its own latency, ring membership and the KV events it applies.",
        [job_variable()], [membership_annotation()])
    board.row("Decisions").add(
        timeseries("Decisions/s by outcome", "owner_hit: a replica holds the prefix; "
                   "ring_home: nobody does, the ring's home took it; ring_balance: nobody "
                   "does, the home was above the mean load, a replica after it took it; "
                   "spill: the home was full; session: session affinity; failover: retry after a failed "
                   "replica; no_key: prompt shorter than a block.", "reqps",
                   [Query(by_outcome, "{{outcome}}")], stack=True),
        timeseries("Outcome share", "Each outcome's share of all decisions.", "percentunit",
                   [Query(f"{by_outcome}\n/ ignoring (outcome) group_left\n"
                          f"{sum_rate(m.ROUTER_DECISIONS, JOB, RATE)}", "{{outcome}}")],
                   stack=True, min_value=0, max_value=1),
        timeseries("Spill ratio", "Decisions that left the preferred replica because it "
                   "was at its bounded-load cap (routing.load_epsilon).", "percentunit",
                   [Query(spill_ratio(JOB, RATE), "spill")], min_value=0, max_value=1),
        timeseries("Router latency", "p50 and p99 of the router's stages: tokenize (once "
                   "per request) and decide.", "s",
                   [Query(quantile(0.5, m.ROUTER_DECISION_SECONDS, JOB, RATE, by=("stage",)),
                          "{{stage}} p50"),
                    Query(quantile(0.99, m.ROUTER_DECISION_SECONDS, JOB, RATE, by=("stage",)),
                          "{{stage}} p99")], min_value=0),
    )
    board.row("Predicted vs real cache hits").add(
        timeseries("Cached tokens/s: predicted vs engine", "Prompt tokens the router "
                   "predicted cached on its choice, prompt tokens the engines served from "
                   "cache, and prompt tokens routed.", "short",
                   [Query(sum_rate(m.ROUTER_MATCHED_TOKENS, JOB, RATE), "predicted (router)"),
                    Query(sum_rate(m.PROMPT_TOKENS_CACHED, JOB, RATE), "cached (engines)"),
                    Query(sum_rate(m.ROUTER_PROMPT_TOKENS, JOB, RATE), "routed")],
                   min_value=0),
        timeseries("Hit rate: predicted vs engine", "Both as a share of prompt tokens.",
                   "percentunit",
                   [Query(predicted_hit_rate(JOB, RATE), "predicted (router)"),
                    Query(token_hit_rate(JOB, RATE), "cached (engines)")],
                   min_value=0, max_value=1),
        timeseries("Cached tokens/s per replica: predicted vs delivered", "For the same "
                   "requests: prompt tokens the router predicted the replica holds, and "
                   "prompt tokens its engine served from cache (usage.cached_tokens). "
                   "Delivered far below predicted: the router's tokens or block hashes "
                   "differ from the engine's (chat template, tokenizer, block size, hash "
                   "seed).", "short",
                   [Query(sum_rate(m.PREDICTED_CACHED_TOKENS, JOB, RATE, by=("replica",)),
                          "{{replica}} predicted"),
                    Query(sum_rate(m.DELIVERED_CACHED_TOKENS, JOB, RATE, by=("replica",)),
                          "{{replica}} delivered")], min_value=0),
        timeseries("Delivered / predicted cached tokens", "Per replica, and by the "
                   "decision's outcome over all replicas: near 1 in parity, towards 0 "
                   "when predicted hits are not delivered (the alert's threshold is "
                   "prometheusRule.minPredictionDeliveredRatio).", "percentunit",
                   [Query(prediction_delivered_ratio(JOB, RATE, by=("replica",)),
                          "{{replica}}"),
                    Query(prediction_delivered_ratio(JOB, RATE, by=("outcome",)),
                          "{{outcome}}")], min_value=0),
    )
    board.row("Membership and KV events").add(
        timeseries("Replicas: ring vs wanted", "Replicas on the consistent-hash ring and "
                   "the configured count.", "short",
                   [Query(aggregate("sum", m.ROUTER_REPLICAS, JOB), "on ring"),
                    Query(aggregate("sum", m.REPLICAS_WANTED, JOB), "wanted")], min_value=0),
        timeseries("Membership changes and failovers", "Replicas added to and removed from "
                   "the ring, and requests retried on another replica, per interval.",
                   "short",
                   [Query(sum_increase(m.ROUTER_MEMBERSHIP_CHANGES, JOB, RATE,
                                       by=("change",)), "{{change}}"),
                    Query(sum_increase(m.ROUTER_DECISIONS, f"{JOB}, {FAILOVER}", RATE),
                          "failover")], bars=True, min_value=0),
        timeseries("KV events/s by kind", "Blocks stored and removed, and caches cleared, "
                   "as the engines report them to the router's ownership index; flat zero "
                   "under traffic means the events do not arrive.", "short",
                   [Query(sum_rate(m.ROUTER_KV_EVENTS, JOB, RATE, by=("kind",)), "{{kind}}")],
                   stack=True, min_value=0),
    )
    return board
