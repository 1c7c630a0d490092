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
- `cacheroute_router_spill_waits_total{result}`: spill waits (router/admission.py,
  driven by serving/routing/cacheroute.py) by how they ended: `owner_hit` (an owner freed a slot:
  no spill), `spill` (an owner finished a request and was still at the bound),
  `timeout`, `busy` (not waited: every owner already had a request waiting).
- `cacheroute_replicas_wanted`: the replicas the configuration asks for (the ingress
  sets it), to compare with the ring's.

And the prewarmer's (serving/routing/prewarm.py), which the ingress runs with this
router's jobs: `cacheroute_prewarm_sent_total`, `cacheroute_prewarm_prefixes_total{result}`,
`cacheroute_prewarm_replicas_total`, `cacheroute_prewarm_seconds` (scale-up prewarm)
and `cacheroute_replications_total{result}` (replication ahead of a spill).

Declared the one way the app declares metrics (serving/observability/metrics.py): one
`MetricSet` per component, on the app's registry unless a test binds its own. The
series are process-wide (a Prometheus registry holds each name once); every router
instance of the process adds to them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from router import AppliedEvents, Decision, Outcome
from serving.observability.metrics import REGISTRY, MetricSet, counter, gauge, histogram

# Sub-millisecond decisions and multi-millisecond tokenisation in one bucket set.
_LATENCY_BUCKETS_S = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2)
# Seconds a joining replica's prewarm took, from its first prefill sent to its last done.
_PREWARM_BUCKETS_S = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

SPILL_WAIT_RESULTS = ("owner_hit", "spill", "timeout", "busy")


class RouterMetrics(MetricSet):
    """A router's view onto the process's router metrics (every router instance of the
    process adds to the same series)."""

    decisions = counter("cacheroute_router_decisions", "Routing decisions by outcome.",
                        ["outcome"], initial=[o.value for o in Outcome])
    matched_tokens = counter("cacheroute_router_matched_tokens",
                             "Prompt tokens predicted cached on the chosen replica.")
    prompt_tokens = counter("cacheroute_router_prompt_tokens", "Prompt tokens routed.")
    latency = histogram("cacheroute_router_decision_seconds", "Router latency by stage.",
                        ["stage"], buckets=_LATENCY_BUCKETS_S, initial=["tokenize", "decide"])
    replicas = gauge("cacheroute_router_replicas", "Replicas on the consistent-hash ring.")
    # Set by the ingress from its configuration, beside the ring's count on dashboards.
    replicas_wanted = gauge("cacheroute_replicas_wanted", "Replicas the configuration asks for.")
    membership = counter("cacheroute_router_membership_changes",
                         "Replicas added to or removed from the ring.", ["change"],
                         initial=["added", "removed"])
    kv_events = counter("cacheroute_router_kv_events",
                        "KV-event blocks applied to the ownership index.", ["kind"],
                        initial=["stored", "removed", "cleared"])
    spill_waits = counter("cacheroute_router_spill_waits",
                          "Requests that waited for an owner before a spill, by result.",
                          ["result"], initial=SPILL_WAIT_RESULTS)

    def __init__(self, block_size: int, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        self._block_size = block_size
        self._members: frozenset[str] = frozenset()

    def on_decision(self, decision: Decision, prompt_tokens: int,
                    tokenize_s: float, decide_s: float) -> None:
        self.decisions.labels(outcome=decision.outcome.value).inc()
        self.matched_tokens.inc(decision.matched_blocks * self._block_size)
        self.prompt_tokens.inc(prompt_tokens)
        self.latency.labels(stage="tokenize").observe(tokenize_s)
        self.latency.labels(stage="decide").observe(decide_s)

    def on_spill_wait(self, result: str) -> None:
        self.spill_waits.labels(result=result).inc()

    def on_replicas(self, replicas: frozenset[str]) -> None:
        added, removed = len(replicas - self._members), len(self._members - replicas)
        if added:
            self.membership.labels(change="added").inc(added)
        if removed:
            self.membership.labels(change="removed").inc(removed)
        self._members = replicas
        self.replicas.set(len(replicas))

    def on_kv_events(self, applied: AppliedEvents) -> None:
        self.kv_events.labels(kind="stored").inc(applied.stored_blocks)
        self.kv_events.labels(kind="removed").inc(applied.removed_blocks)
        self.kv_events.labels(kind="cleared").inc(applied.cleared)


# The app registry's series that are read or set outside a router instance: the
# ingress sets the wanted count, and the spill waits are read back by count.
REPLICAS_WANTED = RouterMetrics.replicas_wanted.on(REGISTRY)
SPILL_WAITS = RouterMetrics.spill_waits.on(REGISTRY)


class PrewarmMetrics(MetricSet):
    """The prewarmer's (serving/routing/prewarm.py, run by the ingress): prefixes sent
    and their results, replicas prewarmed, how long each replica's prewarm took, and
    the replications ahead of a spill."""

    sent = counter("cacheroute_prewarm_sent", "Hot prefixes sent to a joining replica as "
                   "prefill-only requests.")
    results = counter("cacheroute_prewarm_prefixes", "Prewarm prefills finished, by result "
                      "(succeeded: the replica now owns the prefix).", ["result"],
                      initial=["succeeded", "failed"])
    replicas = counter("cacheroute_prewarm_replicas", "Joining replicas prewarmed (with at "
                       "least one hot prefix to send).")
    seconds = histogram("cacheroute_prewarm_seconds", "Time a joining replica's prewarm "
                        "took, first prefill sent to last done.", buckets=_PREWARM_BUCKETS_S)
    replications = counter("cacheroute_replications", "Prefixes prefilled on the replica "
                           "their next request would spill to, by result (sent; succeeded: "
                           "the replica now owns the prefix; failed).", ["result"],
                           initial=["succeeded", "failed", "sent"])
