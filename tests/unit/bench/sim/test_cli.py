"""`cacheroute sim`: JSON output, trace input, pass-through from the main CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sim.cli import main
from bench.trace import save_trace
from bench.workloads import WorkloadSpec, generate
from serving.cli import main as cacheroute_main

SMALL = ["--tenants", "3", "--requests", "30", "--rate", "4", "--system-prompt-words", "40",
         "--block-size", "16", "--no-progress"]


def test_json_has_one_result_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.json"
    assert main(["--replicas", "3", *SMALL, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["policy"] for r in report["results"]] == ["cacheroute", "pow2", "ray-prefix",
                                                         "random"]
    for result in report["results"]:
        assert {"policy", "hit_rate", "oracle_hit_rate", "decisions_per_s", "ttft_p50_s",
                "ttft_p99_s", "load_skew", "wall_s", "requests"} <= set(result)
        assert result["requests"] == 30 and 0.0 <= result["hit_rate"] <= 1.0
    assert report["fleet"]["replicas"] == 3 and report["command"].startswith("cacheroute sim")
    assert "| cacheroute |" in capsys.readouterr().out


def test_a_trace_file_replays_through_the_main_cli(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    save_trace(trace, generate(WorkloadSpec(tenants=2, requests=12, rate_rps=2.0,
                                            system_prompt_words=30)))
    out = tmp_path / "sim.json"
    assert cacheroute_main(["sim", "--replicas", "2", "--trace", str(trace), "--policies",
                            "cacheroute,pow2", "--block-size", "16", "--no-progress",
                            "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["policy"] for r in results] == ["cacheroute", "pow2"]
    assert all(r["requests"] == 12 for r in results)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", str(tmp_path / "missing.jsonl"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("cacheroute sim:")
    with pytest.raises(SystemExit):
        main(["--policies", "nope"])


def test_a_load_floor_keeps_a_low_load_trace_on_its_owners(tmp_path: Path) -> None:
    """Three tenants at 1 req/s over 4 replicas: the bound alone (capacity 1-2) spills
    repeats that a floor of 4 keeps on their owners; the JSON names the floor."""
    runs = {}
    for floor in (0, 4):
        out = tmp_path / f"floor{floor}.json"
        assert main(["--replicas", "4", "--tenants", "3", "--requests", "60", "--rate", "1",
                     "--system-prompt-words", "40", "--block-size", "16", "--no-progress",
                     "--policies", "cacheroute", "--load-floor", str(floor),
                     "--json", str(out)]) == 0
        runs[floor] = json.loads(out.read_text())
    assert runs[4]["fleet"]["load_floor"] == 4
    floored, alone = runs[4]["results"][0], runs[0]["results"][0]
    assert floored["outcomes"].get("spill", 0) < alone["outcomes"].get("spill", 0)
    assert floored["hit_rate"] > alone["hit_rate"]


def test_the_simulated_spill_wait_defaults_to_the_service_default() -> None:
    from bench.sim.cli import build_parser
    from bench.sim.comparison import SPILL_WAIT_S
    from serving.config import RoutingConfig

    assert SPILL_WAIT_S == RoutingConfig().spill_wait_s
    assert build_parser().parse_args([]).spill_wait_s == SPILL_WAIT_S
