"""`cacheroute status` parses the app's /metrics into one row per replica."""

from __future__ import annotations

from serving.observability import telemetry
from serving.replica.engine_stats import EngineTotals
from serving.observability.status import format_table, parse_replicas
from serving.routing.registry import local_routers
from tests.unit.serving.observability.test_telemetry import FakeSource, iteration_stats, scheduler_stats


def test_rows_from_metrics_text() -> None:
    totals = EngineTotals()
    totals.record(scheduler_stats(running=1, waiting=2, usage=0.125, queries=800, hits=600),
                  iteration_stats(finished_latencies=[0.5, 0.7, 0.9]))
    source = FakeSource([
        telemetry.ReplicaView("st-a", totals.snapshot(), in_flight=4, owned_blocks=17),
        telemetry.ReplicaView("st-b", {}),
    ])
    local_routers().register_source(source)
    rows = {r.replica: r for r in parse_replicas(telemetry.render().decode())}
    a, b = rows["st-a"], rows["st-b"]
    assert (a.up, a.hit_rate, a.kv_cache_usage) == (True, 0.75, 0.125)
    assert (a.running, a.waiting, a.in_flight, a.owned_blocks, a.requests) == (1, 2, 4, 17, 3)
    assert b.up and b.hit_rate is None and b.owned_blocks is None
    table = format_table([a, b]).splitlines()
    assert table[0].split()[:3] == ["replica", "health", "hit"]
    assert table[1].split() == ["st-a", "up", "75.0%", "12.5%", "1", "2", "4", "17", "3"]
    assert table[2].split() == ["st-b", "up", "-", "-", "-", "-", "0", "-", "-"]
