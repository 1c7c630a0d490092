"""Prometheus metrics of the `cacheroute` request router, on the app's `/metrics`.

Names as scraped (serving/observability/telemetry.py serves them):
- `cacheroute_router_decisions_total{outcome}`: decisions by Outcome (bounded set).
- `cacheroute_router_matched_tokens_total`: prompt tokens the router predicted
  cached on the chosen replica (matched blocks x block size); compare with the
  engines' `vllm:prompt_tokens_cached_total` to see how well the index tracks reality.
- `cacheroute_router_prompt_tokens_total`: prompt tokens routed.
- `cacheroute_router_decision_seconds{stage}`: `tokenize` and `decide` latency.
- `cacheroute_router_replicas`: replicas on the ring (membership changes show as steps).
- `cacheroute_router_membership_changes_total{change}`: replicas `added` to or
  `removed` from the ring (a death, a drain or a scale event).
- `cacheroute_router_kv_events_total{kind}`: KV-event blocks applied (stored,
  removed) and caches cleared.
- `cacheroute_router_spill_waits_total{result}`: spill waits (`_wait_before_spill`
  in serving/routing/cacheroute.py) by how they ended: `owner_hit` (an owner freed a slot:
  no spill), `spill` (an owner finished a request and was still at the bound),
  `timeout`, `busy` (not waited: every owner already had a request waiting).

The metric objects are process-wide (a Prometheus registry holds each name once);
every router instance of the process adds to them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from router import AppliedEvents, Decision, Outcome
from serving.observability.telemetry import REGISTRY

# Sub-millisecond decisions and multi-millisecond tokenisation in one bucket set.
_LATENCY_BUCKETS_S = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2)

DECISIONS = Counter("cacheroute_router_decisions", "Routing decisions by outcome.",
                    ["outcome"], registry=REGISTRY)
MATCHED_TOKENS = Counter("cacheroute_router_matched_tokens",
                         "Prompt tokens predicted cached on the chosen replica.",
                         registry=REGISTRY)
PROMPT_TOKENS = Counter("cacheroute_router_prompt_tokens", "Prompt tokens routed.",
                        registry=REGISTRY)
LATENCY = Histogram("cacheroute_router_decision_seconds", "Router latency by stage.",
                    ["stage"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY)
REPLICAS = Gauge("cacheroute_router_replicas", "Replicas on the consistent-hash ring.",
                 registry=REGISTRY)
REPLICAS_WANTED = Gauge("cacheroute_replicas_wanted",
                        "Replicas the configuration asks for.", registry=REGISTRY)
MEMBERSHIP = Counter("cacheroute_router_membership_changes",
                     "Replicas added to or removed from the ring.", ["change"],
                     registry=REGISTRY)
KV_EVENTS = Counter("cacheroute_router_kv_events",
                    "KV-event blocks applied to the ownership index.", ["kind"],
                    registry=REGISTRY)

SPILL_WAITS = Counter("cacheroute_router_spill_waits",
                      "Requests that waited for an owner before a spill, by result.",
                      ["result"], registry=REGISTRY)
SPILL_WAIT_RESULTS = ("owner_hit", "spill", "timeout", "busy")

# Every label value exists from the start, so rate() sees a 0 before the first event.
for _o in Outcome:
    DECISIONS.labels(outcome=_o.value)
for _c in ("added", "removed"):
    MEMBERSHIP.labels(change=_c)
for _k in ("stored", "removed", "cleared"):
    KV_EVENTS.labels(kind=_k)
for _r in SPILL_WAIT_RESULTS:
    SPILL_WAITS.labels(result=_r)
for _s in ("tokenize", "decide"):
    LATENCY.labels(stage=_s)


class RouterMetrics:
    """The router's view onto the process-wide metrics."""

    def __init__(self, block_size: int) -> None:
        self._block_size = block_size
        self._replicas: frozenset[str] = frozenset()

    def on_decision(self, decision: Decision, prompt_tokens: int,
                    tokenize_s: float, decide_s: float) -> None:
        DECISIONS.labels(outcome=decision.outcome.value).inc()
        MATCHED_TOKENS.inc(decision.matched_blocks * self._block_size)
        PROMPT_TOKENS.inc(prompt_tokens)
        LATENCY.labels(stage="tokenize").observe(tokenize_s)
        LATENCY.labels(stage="decide").observe(decide_s)

    def on_spill_wait(self, result: str) -> None:
        SPILL_WAITS.labels(result=result).inc()

    def on_replicas(self, replicas: frozenset[str]) -> None:
        added, removed = len(replicas - self._replicas), len(self._replicas - replicas)
        if added:
            MEMBERSHIP.labels(change="added").inc(added)
        if removed:
            MEMBERSHIP.labels(change="removed").inc(removed)
        self._replicas = replicas
        REPLICAS.set(len(replicas))

    def on_kv_events(self, applied: AppliedEvents) -> None:
        KV_EVENTS.labels(kind="stored").inc(applied.stored_blocks)
        KV_EVENTS.labels(kind="removed").inc(applied.removed_blocks)
        KV_EVENTS.labels(kind="cleared").inc(applied.cleared)
