"""Per-replica telemetry: vLLM stats -> engine totals -> routing stats -> /metrics text."""

from __future__ import annotations

import asyncio
import gc
import math

from prometheus_client.parser import text_string_to_metric_families
from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve._private.request_router.common import ReplicaQueueLengthCache
from ray.serve._private.test_utils import FakeRunningReplica
from vllm.v1.metrics.stats import (FinishedRequestStats, IterationStats, PrefixCacheStats,
                                   SchedulerStats)

from serving.contract import ENGINE_STATS_KEY
from serving.replica import engine_stats

from serving.observability import telemetry
from serving.routing.baselines import Pow2Router
from serving.routing.registry import local_routers
from serving.replica.engine_stats import EngineTotals, HistogramTotals


class StatsReplica(FakeRunningReplica):
    """Serve's fake replica plus the routing stats a real one carries."""

    def __init__(self, replica_id: str, routing_stats: dict) -> None:
        super().__init__(replica_id)
        self._stats = routing_stats

    @property
    def routing_stats(self) -> dict:
        return self._stats


def scheduler_stats(*, running=0, waiting=0, usage=0.0, queries=0, hits=0) -> SchedulerStats:
    prefix = PrefixCacheStats()
    prefix.queries, prefix.hits = queries, hits
    return SchedulerStats(num_running_reqs=running, num_waiting_reqs=waiting,
                          kv_cache_usage=usage, prefix_cache_stats=prefix)


def iteration_stats(*, ttfts=(), finished_latencies=(), generation_tokens=0) -> IterationStats:
    it = IterationStats()
    it.time_to_first_tokens_iter = list(ttfts)
    it.num_generation_tokens = generation_tokens
    it.finished_requests = [FinishedRequestStats(finish_reason=None, e2e_latency=s)
                            for s in finished_latencies]
    return it


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_engine_totals_accumulate_counters_and_keep_latest_gauges() -> None:
    totals = EngineTotals()
    totals.record(scheduler_stats(running=3, waiting=1, usage=0.5, queries=256, hits=128),
                  iteration_stats(ttfts=[0.2], generation_tokens=5))
    totals.record(scheduler_stats(running=1, waiting=0, usage=0.25, queries=256, hits=256),
                  iteration_stats(finished_latencies=[1.5, 3.0], generation_tokens=2))
    snap = totals.snapshot()
    assert (snap["prefix_cache_queries"], snap["prefix_cache_hits"]) == (512, 384)
    assert (snap["running"], snap["waiting"], snap["kv_cache_usage"]) == (1, 0, 0.25)
    assert snap["generation_tokens"] == 7 and snap["request_success"] == 2
    assert sum(snap["ttft_seconds"]["counts"]) == 1 and snap["ttft_seconds"]["sum"] == 0.2
    assert sum(snap["e2e_seconds"]["counts"]) == 2 and snap["e2e_seconds"]["sum"] == 4.5


def test_histogram_buckets_are_upper_inclusive() -> None:
    h = HistogramTotals([0.1, 1.0])
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.counts == [1, 2, 1]


def test_stat_logger_feeds_the_process_snapshot() -> None:
    before = engine_stats.snapshot()["prefix_cache_queries"]
    logger = engine_stats.EngineStatsLogger(vllm_config=None)  # type: ignore[arg-type]
    logger.record(scheduler_stats(queries=64, hits=0), None)
    assert engine_stats.snapshot()["prefix_cache_queries"] == before + 64


def engine_snapshot(queries: int, hits: int, ttfts=(0.05, 0.3)) -> dict:
    totals = EngineTotals()
    totals.record(scheduler_stats(running=2, waiting=1, usage=0.4, queries=queries, hits=hits),
                  iteration_stats(ttfts=ttfts, finished_latencies=[0.9]))
    return totals.snapshot()


class FakeSource:
    def __init__(self, views: list[telemetry.ReplicaView]) -> None:
        self.views = views

    def replica_views(self) -> list[telemetry.ReplicaView]:
        return self.views


def test_metrics_text_has_each_replica_under_vllm_names() -> None:
    source = FakeSource([
        telemetry.ReplicaView("r-a", engine_snapshot(1000, 750), in_flight=3, owned_blocks=9,
                              kv_blocks_removed=4),
        telemetry.ReplicaView("r-b", engine_snapshot(1000, 0)),
    ])
    local_routers().register_source(source)
    got = samples(telemetry.render())
    assert got[("vllm:prefix_cache_queries_total", (("replica", "r-a"),))] == 1000
    assert got[("vllm:prefix_cache_hits_total", (("replica", "r-a"),))] == 750
    assert got[("vllm:prefix_cache_hits_total", (("replica", "r-b"),))] == 0
    assert got[("vllm:kv_cache_usage_perc", (("replica", "r-b"),))] == 0.4
    assert got[("vllm:num_requests_running", (("replica", "r-a"),))] == 2
    assert got[("cacheroute_replica_in_flight", (("replica", "r-a"),))] == 3
    assert got[("cacheroute_replica_owned_blocks", (("replica", "r-a"),))] == 9
    assert got[("cacheroute_replica_kv_blocks_removed_total", (("replica", "r-a"),))] == 4
    # Histogram buckets are cumulative and end in +Inf == count.
    ttft = {dict(k[1])["le"]: v for k, v in got.items()
            if k[0] == "vllm:time_to_first_token_seconds_bucket"
            and dict(k[1])["replica"] == "r-a"}
    assert ttft["+Inf"] == 2 == got[("vllm:time_to_first_token_seconds_count",
                                     (("replica", "r-a"),))]
    les = sorted((float(le), v) for le, v in ttft.items())
    assert all(a[1] <= b[1] for a, b in zip(les, les[1:]))
    assert min(v for le, v in les if le >= 0.3) == 2 and max(v for le, v in les if le < 0.05) == 0
    assert math.isclose(got[("vllm:time_to_first_token_seconds_sum", (("replica", "r-a"),))],
                        0.35)
    # A router that is gone drops out of the scrape.
    del source
    gc.collect()
    assert not any(k[1] == (("replica", "r-a"),) for k in samples(telemetry.render()))


def test_baseline_router_exposes_its_replicas() -> None:
    router = Pow2Router(deployment_id=DeploymentID(name="LLMServer:m"),
                        handle_source=DeploymentHandleSource.UNKNOWN,
                        use_replica_queue_len_cache=True)
    replicas = [StatsReplica("p-0", {ENGINE_STATS_KEY: engine_snapshot(10, 5)}),
                StatsReplica("p-1", {})]
    async def update() -> None:  # Serve's router probes queue lengths on its loop
        router.update_replicas(replicas)
    asyncio.run(update())
    router._replica_queue_len_cache.update(replicas[0].replica_id, 2)
    views = {v.replica: v for v in router.replica_views()}
    assert views["p-0"].engine["prefix_cache_hits"] == 5 and views["p-0"].in_flight == 2
    assert views["p-1"].engine == {} and views["p-1"].owned_blocks is None
    got = samples(telemetry.render())
    assert got[("vllm:prefix_cache_hits_total", (("replica", "p-0"),))] == 5
    assert ("vllm:prefix_cache_hits_total", (("replica", "p-1"),)) not in got
    assert got[("cacheroute_replica_up", (("replica", "p-1"),))] == 1


def test_baseline_in_flight_outlives_the_queue_length_cache_timeout() -> None:
    router = Pow2Router(deployment_id=DeploymentID(name="LLMServer:m"),
                        handle_source=DeploymentHandleSource.UNKNOWN,
                        use_replica_queue_len_cache=True)
    replicas = [StatsReplica("p-0", {}), StatsReplica("p-1", {})]
    busy = replicas[0].replica_id

    async def drive() -> None:  # Serve calls the router's hooks on its loop
        router.update_replicas(replicas)
        for _ in range(3):
            router.on_send_request(busy)
        # Serve's cache forgets an entry after 10 s without news, and the next send
        # restarts it at 1; the load-skew series must still read 4 in flight.
        router._replica_queue_len_cache.invalidate_key(busy)
        router.on_send_request(busy)
    asyncio.run(drive())
    assert router._replica_queue_len_cache.get(busy) == 1
    views = {v.replica: v.in_flight for v in router.replica_views()}
    assert views == {"p-0": 4, "p-1": 0}
    for i in range(4):
        router.on_request_completed(busy, f"i-{i}")
        router.decrement_queue_len_cache(busy)
    assert {v.replica: v.in_flight for v in router.replica_views()} == {"p-0": 0, "p-1": 0}
    # A dead replica leaves the series, and its own count goes with it.
    router.on_send_request(busy)
    router.on_replica_actor_died(busy)
    assert {v.replica: v.in_flight for v in router.replica_views()} == {"p-1": 0}
    router._replica_queue_len_cache.invalidate_key(busy)
    assert router.in_flight(busy) == 0


def test_views_tolerate_replicas_without_routing_stats() -> None:
    cache = ReplicaQueueLengthCache()
    views = telemetry.views_from([FakeRunningReplica("x")], lambda rid: cache.get(rid) or 0,
                                 owned={}, removed={})
    assert views == [telemetry.ReplicaView("x", {}, 0, 0, 0)]
