"""bench.service_metrics: parsing and differencing the app's /metrics, load sampling."""

from __future__ import annotations

import time

import pytest

from bench.service_metrics import (
    LoadSample,
    LoadSampler,
    MetricsSnapshot,
    diff,
    load_skew,
    parse_metrics,
    settled,
    skew,
)


def metrics_text(*, hits: tuple[float, float], queries: tuple[float, float],
                 requests: tuple[float, float], in_flight: tuple[float, float],
                 spill: float | None = 0.0) -> str:
    """The app's /metrics as serving/observability/telemetry.py renders it, for replicas r1 and r2."""
    lines = []

    def family(name: str, kind: str, values: tuple[float, float]) -> None:
        base = name.removesuffix("_total")
        lines.append(f"# HELP {base} x.\n# TYPE {base} {kind}")
        lines.extend(f'{name}{{replica="r{i + 1}"}} {v}' for i, v in enumerate(values))

    family("vllm:prefix_cache_queries_total", "counter", queries)
    family("vllm:prefix_cache_hits_total", "counter", hits)
    family("vllm:request_success_total", "counter", requests)
    family("vllm:kv_cache_usage_perc", "gauge", (0.5, 0.25))
    family("cacheroute_replica_in_flight", "gauge", in_flight)
    if spill is not None:
        lines.append("# HELP cacheroute_router_decisions Routing decisions by outcome.\n"
                     "# TYPE cacheroute_router_decisions counter")
        lines.append(f'cacheroute_router_decisions_total{{outcome="owner_hit"}} {3 * spill + 5}')
        lines.append(f'cacheroute_router_decisions_total{{outcome="spill"}} {spill}')
        lines.append('cacheroute_router_decisions_created{outcome="spill"} 1.7e9')
    return "\n".join(lines) + "\n"


BEFORE = metrics_text(hits=(100, 0), queries=(200, 50), requests=(1, 1), in_flight=(0, 0),
                      spill=2)
AFTER = metrics_text(hits=(900, 300), queries=(1200, 850), requests=(11, 5),
                     in_flight=(3, 1), spill=7)


def test_parse_reads_counters_in_flight_and_decisions_per_replica() -> None:
    snap = parse_metrics(AFTER)
    assert snap.counter("prefix_cache_hits") == {"r1": 900, "r2": 300}
    assert snap.counter("requests") == {"r1": 11, "r2": 5}
    assert snap.in_flight == {"r1": 3, "r2": 1}
    assert snap.decisions == {"owner_hit": 26, "spill": 7}  # `_created` samples ignored


def test_diff_gives_the_runs_hit_rate_requests_and_spills() -> None:
    run = diff(parse_metrics(BEFORE), parse_metrics(AFTER))
    assert run.engine_hit_rate == pytest.approx((800 + 300) / (1000 + 800))
    assert run.engine_prompt_hit_rate is None  # not exported by this engine
    assert run.requests_by_replica == {"r1": 10, "r2": 4}
    assert run.spills == 5


def test_policies_without_decision_counters_have_no_spill_count() -> None:
    before = parse_metrics(metrics_text(hits=(0, 0), queries=(0, 0), requests=(0, 0),
                                        in_flight=(0, 0), spill=None))
    run = diff(before, before)
    assert run.spills is None and run.decisions is None and run.engine_hit_rate is None


def test_a_replica_first_seen_after_the_start_counts_from_zero() -> None:
    before = MetricsSnapshot(replicas={}, in_flight={}, decisions=None)
    run = diff(before, parse_metrics(AFTER))
    assert run.requests_by_replica == {"r1": 11, "r2": 5}


def test_the_apps_own_rendering_parses() -> None:
    from serving.observability.telemetry import ReplicaView, render
    from serving.routing.registry import local_routers

    class Source:
        def replica_views(self) -> list[ReplicaView]:
            return [ReplicaView(replica="abc", in_flight=2,
                                engine={"prefix_cache_hits": 40, "prefix_cache_queries": 80,
                                        "prompt_tokens": 90, "prompt_tokens_cached": 30,
                                        "request_success": 4})]

    source = Source()
    local_routers().register_source(source)
    snap = parse_metrics(render().decode())
    assert snap.replicas["abc"] == {"prefix_cache_hits": 40, "prefix_cache_queries": 80,
                                    "prompt_tokens": 90, "prompt_tokens_cached": 30,
                                    "requests": 4}
    assert snap.in_flight["abc"] == 2


def test_settled_waits_for_two_equal_scrapes() -> None:
    texts = iter([BEFORE, AFTER, AFTER])
    naps: list[float] = []
    snap = settled("u", quiet_s=2.0, fetch=lambda _: parse_metrics(next(texts)),
                   sleep=naps.append)
    assert snap.counter("requests") == {"r1": 11, "r2": 5} and naps == [2.0, 2.0]


def test_load_skew_is_max_over_mean_of_time_averaged_in_flight() -> None:
    samples = [LoadSample(t_s=0, in_flight={"a": 4, "b": 0}),
               LoadSample(t_s=1, in_flight={"a": 2, "b": 2})]
    assert load_skew(samples, 2) == pytest.approx(3 / 2)
    assert load_skew(samples, 4) == pytest.approx(3 / 1)  # two replicas never seen: idle
    assert load_skew([], 2) is None
    assert skew([0, 0]) is None and skew([2, 2]) == 1.0


def test_sampler_records_in_flight_until_stopped() -> None:
    snap = parse_metrics(AFTER)
    with LoadSampler(metrics_url="u", period_s=0.01, fetch=lambda _: snap) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert all(s.in_flight == {"r1": 3, "r2": 1} for s in sampler.samples)
    assert [s.t_s for s in sampler.samples] == sorted(s.t_s for s in sampler.samples)


def test_replications_are_read_by_result_and_differenced() -> None:
    def text(sent: float, ok: float) -> str:
        return ("# HELP cacheroute_replications Prefixes prefilled ahead of a spill.\n"
                "# TYPE cacheroute_replications counter\n"
                f'cacheroute_replications_total{{result="sent"}} {sent}\n'
                f'cacheroute_replications_total{{result="succeeded"}} {ok}\n'
                'cacheroute_replications_created{result="sent"} 1.7e9\n')
    before, after = parse_metrics(text(2, 1)), parse_metrics(text(5, 3))
    assert after.replications == {"sent": 5, "succeeded": 3}
    assert diff(before, after).replications == {"sent": 3, "succeeded": 2}
    # A policy without them (pow2, ray-prefix, random) reports none.
    assert parse_metrics("").replications is None
    assert diff(parse_metrics(""), parse_metrics("")).replications is None


def test_spill_waits_are_read_by_result_and_differenced() -> None:
    def text(hit: float, timeout: float) -> str:
        return ("# HELP cacheroute_router_spill_waits Spill waits by result.\n"
                "# TYPE cacheroute_router_spill_waits counter\n"
                f'cacheroute_router_spill_waits_total{{result="owner_hit"}} {hit}\n'
                f'cacheroute_router_spill_waits_total{{result="timeout"}} {timeout}\n')
    before, after = parse_metrics(text(1, 0)), parse_metrics(text(4, 1))
    assert diff(before, after).spill_waits == {"owner_hit": 3, "timeout": 1}
    assert diff(parse_metrics(""), parse_metrics("")).spill_waits is None
