"""The app's Prometheus endpoint: router metrics and per-replica cache telemetry.

One scrape target, `GET /metrics` on the service port (8000 by default), served by
the ingress process -- the process where Serve runs the request router of every
handle the ingress holds. It exposes:

- the router's own metrics, `cacheroute_router_*` (serving/routing/metrics.py), and
  the ingress's: failover, prefixes, documents, prewarm (each package's metrics.py);
- per replica, with a `replica` label (Serve's replica id), the engine's telemetry
  under vLLM's own metric names (`vllm:prefix_cache_queries_total`,
  `vllm:prefix_cache_hits_total`, `vllm:kv_cache_usage_perc`,
  `vllm:num_requests_running`, ...; serving/replica/engine_stats.py collects them in the
  replica), plus what the router knows of it (`cacheroute_replica_in_flight`,
  `cacheroute_replica_owned_blocks`, `cacheroute_replica_kv_blocks_removed_total`).

Replica values arrive through Ray Serve's routing stats, which the controller pulls
from every replica every `request_routing_stats_period_s` (serving/app.py) and
broadcasts to the routers; scrapes see them that stale. The routers of the process
are found through `local_routers()` (serving/routing/registry.py). Series of a
replica that left the deployment disappear with it.

Every series is declared in serving/observability/metrics.py's one way, on its one
registry: the routers' own metrics where they are updated, the per-replica families
here with `collected`, built afresh at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from serving.contract import ENGINE_STATS_KEY
from serving.observability.metrics import REGISTRY, Kind, collected
from serving.routing.registry import LocalRouters, local_routers

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ReplicaView:
    """What one router knows about one replica at scrape time."""

    replica: str
    engine: Mapping[str, Any] = field(default_factory=dict)  # engine_stats snapshot
    in_flight: int = 0
    owned_blocks: int | None = None  # None: the policy keeps no ownership index
    kv_blocks_removed: int | None = None


class ReplicaSource(Protocol):
    def replica_views(self) -> list[ReplicaView]: ...


def current_views(routers: LocalRouters | None = None) -> list[ReplicaView]:
    """Per-replica views of every live router in this process, one per replica."""
    by_replica: dict[str, ReplicaView] = {}
    for source in (routers or local_routers()).sources():
        for view in source.replica_views():
            # Two routers of one deployment see the same replicas; keep the view
            # with engine data (the freshest broadcast wins ties arbitrarily).
            if view.replica not in by_replica or (view.engine and
                                                  not by_replica[view.replica].engine):
                by_replica[view.replica] = view
    return [by_replica[r] for r in sorted(by_replica)]


_REPLICA = ["replica"]

# Each engine's telemetry under vLLM's own name (a counter without its _total suffix),
# with the key of the replica's snapshot (serving/replica/engine_stats.py) it comes from.
_ENGINE_SCALARS = (
    (collected(Kind.COUNTER, "vllm:prefix_cache_queries", "Prefix-cache queries, in tokens.",
               _REPLICA), "prefix_cache_queries"),
    (collected(Kind.COUNTER, "vllm:prefix_cache_hits", "Prefix-cache hits, in tokens.",
               _REPLICA), "prefix_cache_hits"),
    (collected(Kind.COUNTER, "vllm:prompt_tokens", "Prefill tokens processed.", _REPLICA),
     "prompt_tokens"),
    (collected(Kind.COUNTER, "vllm:prompt_tokens_cached",
               "Prompt tokens served from cache instead of computed.", _REPLICA),
     "prompt_tokens_cached"),
    (collected(Kind.COUNTER, "vllm:generation_tokens", "Generation tokens processed.",
               _REPLICA), "generation_tokens"),
    (collected(Kind.COUNTER, "vllm:request_success", "Finished requests.", _REPLICA),
     "request_success"),
    (collected(Kind.GAUGE, "vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).",
               _REPLICA), "kv_cache_usage"),
    (collected(Kind.GAUGE, "vllm:num_requests_running",
               "Requests in the engine's running batch.", _REPLICA), "running"),
    (collected(Kind.GAUGE, "vllm:num_requests_waiting", "Requests waiting to be scheduled.",
               _REPLICA), "waiting"),
)
_ENGINE_HISTOGRAMS = (
    (collected(Kind.HISTOGRAM, "vllm:time_to_first_token_seconds", "Time to first token.",
               _REPLICA), "ttft_seconds"),
    (collected(Kind.HISTOGRAM, "vllm:e2e_request_latency_seconds",
               "End-to-end request latency.", _REPLICA), "e2e_seconds"),
)
# What the routers know of each replica.
_IN_FLIGHT = collected(Kind.GAUGE, "cacheroute_replica_in_flight",
                       "Requests the router has in flight to the replica.", _REPLICA)
_UP = collected(Kind.GAUGE, "cacheroute_replica_up",
                "1 for each replica the router may route to.", _REPLICA)
_OWNED = collected(Kind.GAUGE, "cacheroute_replica_owned_blocks",
                   "KV blocks the ownership index attributes to the replica.", _REPLICA)
_REMOVED = collected(Kind.COUNTER, "cacheroute_replica_kv_blocks_removed",
                     "KV blocks the replica's engine evicted (KV events).", _REPLICA)


def _histogram_buckets(snap: Mapping[str, Any]) -> tuple[list[tuple[str, float]], float]:
    bounds, counts = snap["bounds"], snap["counts"]
    buckets, running = [], 0
    for le, count in zip([*map(float, bounds), float("inf")], counts):
        running += int(count)
        buckets.append(("+Inf" if le == float("inf") else repr(le), running))
    return buckets, float(snap.get("sum", 0.0))


class ReplicaCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        views = current_views()
        for spec, key in _ENGINE_SCALARS:
            fam = spec.family()
            for v in views:
                if key in v.engine:
                    fam.add_metric([v.replica], float(v.engine[key]))
            yield fam
        for spec, key in _ENGINE_HISTOGRAMS:
            fam = spec.family()
            for v in views:
                snap = v.engine.get(key)
                if snap:
                    buckets, total = _histogram_buckets(snap)
                    fam.add_metric([v.replica], buckets, total)
            yield fam
        in_flight, up, owned, removed = (spec.family()
                                         for spec in (_IN_FLIGHT, _UP, _OWNED, _REMOVED))
        for v in views:
            in_flight.add_metric([v.replica], float(v.in_flight))
            up.add_metric([v.replica], 1.0)
            if v.owned_blocks is not None:
                owned.add_metric([v.replica], float(v.owned_blocks))
            if v.kv_blocks_removed is not None:
                removed.add_metric([v.replica], float(v.kv_blocks_removed))
        yield from (in_flight, up, owned, removed)


REGISTRY.register(ReplicaCollector())


def render() -> bytes:
    """The Prometheus text exposition of this process's app metrics."""
    return generate_latest(REGISTRY)


def engine_snapshot(routing_stats: Mapping[str, Any] | None) -> Mapping[str, Any]:
    stats = routing_stats or {}
    snap = stats.get(ENGINE_STATS_KEY)
    return snap if isinstance(snap, Mapping) else {}


def views_from(replicas: Iterable[Any], in_flight: Callable[[Any], int], *,
               owned: Mapping[str, int] | None = None,
               removed: Mapping[str, int] | None = None) -> list[ReplicaView]:
    """ReplicaViews from Serve's RunningReplica objects (duck-typed: `replica_id`,
    `routing_stats`) and a router's in-flight count per replica id
    (serving/routing/in_flight.py)."""
    views = []
    for r in replicas:
        rid = r.replica_id.unique_id
        try:
            stats = r.routing_stats
        except AttributeError:
            stats = None
        views.append(ReplicaView(
            replica=rid,
            engine=engine_snapshot(stats),
            in_flight=int(in_flight(r.replica_id)),
            owned_blocks=None if owned is None else int(owned.get(rid, 0)),
            kv_blocks_removed=None if removed is None else int(removed.get(rid, 0)),
        ))
    return views
