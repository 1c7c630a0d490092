"""Dashboard "cacheroute / replicas": each engine replica's cache, memory and load.

What to look for: one replica with a much lower hit rate or much higher KV usage than
the others (a hot prefix pinned to it; the load bound spills it elsewhere), owned
blocks that keep growing while evictions stay at zero (the router's index is not
hearing KV events), a queue (waiting) on some replicas only.
"""

from __future__ import annotations

from monitoring import metrics as m
from monitoring.panels import RATE, Board, Query, label_variable, timeseries
from monitoring.promql import (
    aggregate,
    prefix_cache_hit_rate,
    quantile,
    sum_rate,
    token_hit_rate,
)
from monitoring.scope import JOB, job_variable, membership_annotation

SEL = f'{JOB}, replica=~"$replica"'
BY = ("replica",)
LEGEND = "{{replica}}"


def build() -> Board:
    board = Board(
        "replicas", "cacheroute / replicas",
        "Per engine replica (label replica, the Serve replica id): prefix-cache hit rate, "
        "KV-cache usage, queue, the router's ownership index and evictions.",
        [job_variable(),
         label_variable("replica", "Replica", f"{m.KV_CACHE_USAGE}{{{JOB}}}", multi=True)],
        [membership_annotation()])
    board.row("Prefix cache").add(
        timeseries("Prefix-cache hit rate", "Each engine's prefix-cache hits over lookups, "
                   "in tokens.", "percentunit",
                   [Query(prefix_cache_hit_rate(SEL, RATE, by=BY), LEGEND)],
                   min_value=0, max_value=1),
        timeseries("Prompt-token hit rate", "Prompt tokens served from cache over prompt "
                   "tokens, per replica (finished requests).", "percentunit",
                   [Query(token_hit_rate(SEL, RATE, by=BY), LEGEND)],
                   min_value=0, max_value=1),
    )
    board.row("KV cache and queue").add(
        timeseries("KV-cache usage", "Share of the replica's KV blocks held by running "
                   "requests; near 1 the engine preempts requests and evicts cached "
                   "prefixes.", "percentunit",
                   [Query(aggregate("max", m.KV_CACHE_USAGE, SEL, by=BY), LEGEND)],
                   min_value=0, max_value=1),
        timeseries("Requests in flight (router)", "Requests the router has sent to the "
                   "replica and not seen finish: what the bounded-load check counts.",
                   "short",
                   [Query(aggregate("sum", m.REPLICA_IN_FLIGHT, SEL, by=BY), LEGEND)],
                   min_value=0),
        timeseries("Requests running", "Requests the engine is running.", "short",
                   [Query(aggregate("sum", m.REQUESTS_RUNNING, SEL, by=BY), LEGEND)],
                   min_value=0),
        timeseries("Requests waiting", "Requests queued in the engine: the replica is "
                   "saturated.", "short",
                   [Query(aggregate("sum", m.REQUESTS_WAITING, SEL, by=BY), LEGEND)],
                   min_value=0),
    )
    board.row("Ownership and evictions").add(
        timeseries("Owned blocks (router index)", "KV blocks the router's ownership index "
                   "attributes to the replica.", "short",
                   [Query(aggregate("sum", m.REPLICA_OWNED_BLOCKS, SEL, by=BY), LEGEND)],
                   min_value=0),
        timeseries("Evictions", "KV blocks the engine removed from its cache per second "
                   "(from its KV events).", "short",
                   [Query(sum_rate(m.REPLICA_BLOCKS_REMOVED, SEL, RATE, by=BY), LEGEND)],
                   min_value=0),
    )
    board.row("Latency and load").add(
        timeseries("Time to first token p99", "Per replica.", "s",
                   [Query(quantile(0.99, m.TTFT_SECONDS, SEL, RATE, by=BY), LEGEND)],
                   min_value=0),
        timeseries("Requests/s", "Requests each replica completed per second: the load "
                   "skew the cache affinity costs.", "reqps",
                   [Query(sum_rate(m.REQUEST_SUCCESS, SEL, RATE, by=BY), LEGEND)],
                   min_value=0),
    )
    return board
