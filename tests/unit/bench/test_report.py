"""bench.stats percentiles and bench.report summaries, on hand-made results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.replay import RequestResult
from bench.report import (
    markdown_table,
    summarise,
    summary_from_json,
    summary_json,
    workload_description,
    write_chart,
    write_load_chart,
    write_outputs,
)
from bench.stats import percentile


def make_result(index: int, *, ttft_s: float | None = 0.1, prompt: int | None = 100,
                cached: int | None = 0, error: str | None = None, sent_s: float = 0.0,
                done_s: float = 1.0) -> RequestResult:
    return RequestResult(index=index, policy="p", tenant="t00", sent_s=sent_s, done_s=done_s,
                         ttft_s=None if error else ttft_s, e2e_s=None if error else 0.5,
                         prompt_tokens=None if error else prompt,
                         cached_tokens=None if error else cached,
                         completion_tokens=None if error else 8, error=error)


def test_percentile_interpolates_like_numpy_linear() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 4.0
    assert percentile(samples, 50) == 2.5
    assert percentile(samples, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(samples, 101)


def test_summary_counts_hit_rate_over_successful_requests_only() -> None:
    results = [
        make_result(0, prompt=100, cached=0, ttft_s=1.0, sent_s=0.0, done_s=1.0),
        make_result(1, prompt=300, cached=256, ttft_s=0.2, sent_s=0.5, done_s=2.0),
        make_result(2, error="APIConnectionError: boom", sent_s=1.0, done_s=4.0),
    ]
    s = summarise("cacheroute", results, oracle_hit_rate=0.7)
    assert s.requests == 3 and s.errors == 1
    assert s.hit_rate == pytest.approx(256 / 400)
    assert (s.prompt_tokens, s.cached_tokens) == (400, 256)
    assert s.ttft_p50_s == pytest.approx(0.6)
    assert s.throughput_rps == pytest.approx(2 / 4.0)
    assert s.missing_usage == 0
    table = markdown_table([s])
    assert "| cacheroute | 64.0% | - | 70.0% | - |" in table
    assert s.output_tokens_per_s == pytest.approx(16 / 4.0)


def test_summary_of_only_errors_has_no_latencies_and_json_nulls() -> None:
    s = summarise("pow2", [make_result(0, error="Timeout")], oracle_hit_rate=0.5)
    assert s.errors == 1 and s.hit_rate == 0.0
    data = summary_json(s)
    assert data["ttft_p50_s"] is None and data["e2e_p50_s"] is None
    assert "| pow2 | 0.0% | - | 50.0% | - | - |" in markdown_table([s])


def test_a_summary_read_back_from_json_equals_the_one_written() -> None:
    s = summarise("pow2", [make_result(0, error="Timeout")], oracle_hit_rate=0.5)
    back = summary_from_json({**summary_json(s), "decisions": {"spill": 1}})
    assert math.isnan(back.ttft_p50_s) and math.isnan(back.e2e_p99_s)
    assert back.engine_hit_rate is None  # optional fields stay None
    assert summary_json(back) == summary_json(s)


def test_service_measurements_are_carried_into_the_table_and_json() -> None:
    s = summarise("cacheroute", [make_result(0, prompt=256, cached=128)], oracle_hit_rate=0.6,
                  engine_hit_rate=0.45, capacity_oracle_hit_rate=0.55, load_skew=1.25,
                  spills=3)
    assert "| cacheroute | 50.0% | 45.0% | 60.0% | 55.0% |" in markdown_table([s])
    assert "| 1.25 | 3 | 0 | 1 |" in markdown_table([s])
    data = summary_json(s)
    for key in ("policy", "hit_rate", "oracle_hit_rate", "ttft_p50_s", "ttft_p99_s",
                "load_skew", "errors", "engine_hit_rate", "capacity_oracle_hit_rate",
                "spills", "e2e_p50_s", "output_tokens_per_s"):
        assert key in data
    assert data["load_skew"] == 1.25 and data["spills"] == 3


def test_chart_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = {"a": [make_result(0), make_result(1, ttft_s=0.3)], "b": [make_result(0)]}
    summaries = [summarise(name, rs, oracle_hit_rate=0.5) for name, rs in results.items()]
    path = tmp_path / "chart.png"
    ttfts = {name: [r.ttft_s for r in rs if r.ttft_s is not None] for name, rs in results.items()}
    write_chart(path, summaries, ttfts, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    load = tmp_path / "load.png"
    write_load_chart(load, {"a": [(0.0, {"r1": 1.0, "r2": 0.0}), (1.0, {"r1": 2.0})],
                            "b": []}, title="test")
    assert load.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_has_one_object_per_policy_with_the_required_keys(tmp_path: Path) -> None:
    from bench.live import POLICIES, build_parser

    args = build_parser().parse_args(["--workload", "documents", "--rate", "0.5", "--out-dir",
                                      str(tmp_path), "--json", str(tmp_path / "out.json")])
    result = RequestResult(index=0, policy="p", tenant="d00", sent_s=0.0, done_s=1.0,
                           ttft_s=0.2, e2e_s=0.9, prompt_tokens=300, cached_tokens=256,
                           completion_tokens=8, error=None)
    summaries = [summarise(p, [result], oracle_hit_rate=0.9, capacity_oracle_hit_rate=0.8,
                           engine_hit_rate=0.8, load_skew=1.5, spills=None) for p in POLICIES]
    from bench.machine import machine_info

    write_outputs(args, machine_info(), "cacheroute bench", workload_description(
        "documents", args, 1), summaries, {p: [0.2] for p in POLICIES},
        {p: [(0.0, {"r1": 1.0})] for p in POLICIES}, {}, capacity_blocks=728)
    data = json.loads((tmp_path / "out.json").read_text())
    assert [r["policy"] for r in data["results"]] == list(POLICIES)
    for r in data["results"]:
        for key in ("policy", "hit_rate", "oracle_hit_rate", "ttft_p50_s", "ttft_p99_s",
                    "load_skew", "errors", "engine_hit_rate", "capacity_oracle_hit_rate",
                    "spills", "e2e_p50_s", "output_tokens_per_s"):
            assert key in r
    assert data["workload"]["workload"] == "documents"
    assert data["workload"]["capacity_oracle_blocks"] == 728
