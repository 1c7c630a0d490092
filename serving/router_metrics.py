"""Prometheus metrics of the `cacheroute` request router (exported by Ray's metrics agent).

Names as scraped (Ray prefixes `ray_`; Serve adds deployment/replica/application tags):
- `ray_cacheroute_router_decisions_total{outcome}`: decisions by Outcome (bounded set).
- `ray_cacheroute_router_matched_tokens_total`: prompt tokens the router predicted
  cached on the chosen replica (matched blocks x block size); compare with the engines'
  `ray_vllm_prompt_tokens_cached_total` to see how well the index tracks reality.
- `ray_cacheroute_router_prompt_tokens_total`: prompt tokens routed.
- `ray_cacheroute_router_decision_seconds{stage}`: `tokenize` and `decide` latency.
- `ray_cacheroute_router_replicas`: replicas on the ring (membership changes show as steps).
- `ray_cacheroute_router_kv_events_total{kind}`: KV-event blocks applied (stored, removed)
  and caches cleared.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

from router import AppliedEvents, Decision

# Sub-millisecond decisions and multi-millisecond tokenisation in one bucket set.
_LATENCY_BOUNDARIES_S = [2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2]


class RouterMetrics:
    def __init__(self, block_size: int) -> None:
        self._block_size = block_size
        self.decisions = Counter("cacheroute_router_decisions",
                                 description="Routing decisions by outcome.",
                                 tag_keys=("outcome",))
        self.matched_tokens = Counter(
            "cacheroute_router_matched_tokens",
            description="Prompt tokens predicted cached on the chosen replica.")
        self.prompt_tokens = Counter("cacheroute_router_prompt_tokens",
                                     description="Prompt tokens routed.")
        self.latency = Histogram("cacheroute_router_decision_seconds",
                                 description="Router latency by stage.",
                                 boundaries=_LATENCY_BOUNDARIES_S, tag_keys=("stage",))
        self.replicas = Gauge("cacheroute_router_replicas",
                              description="Replicas on the consistent-hash ring.")
        self.kv_events = Counter("cacheroute_router_kv_events",
                                 description="KV-event blocks applied to the ownership index.",
                                 tag_keys=("kind",))

    def on_decision(self, decision: Decision, prompt_tokens: int,
                    tokenize_s: float, decide_s: float) -> None:
        self.decisions.inc(tags={"outcome": decision.outcome.value})
        # Ray counters reject increments of 0.
        if decision.matched_blocks:
            self.matched_tokens.inc(decision.matched_blocks * self._block_size)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
        self.latency.observe(tokenize_s, tags={"stage": "tokenize"})
        self.latency.observe(decide_s, tags={"stage": "decide"})

    def on_kv_events(self, applied: AppliedEvents) -> None:
        if applied.stored_blocks:
            self.kv_events.inc(applied.stored_blocks, tags={"kind": "stored"})
        if applied.removed_blocks:
            self.kv_events.inc(applied.removed_blocks, tags={"kind": "removed"})
        if applied.cleared:
            self.kv_events.inc(applied.cleared, tags={"kind": "cleared"})
