"""bench/results.py: the result file's schema, and the generated results page."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from pathlib import Path

import pytest

from bench import results
from bench.machine import machine_info

START = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone.utc)


def write(directory: Path, *, benchmark: str = "sim", workload: str = "tenants",
          started: dt.datetime = START, rows: list[dict] | None = None,
          chart: Path | None = None) -> Path:
    path = results.write_result(
        benchmark, workload, command=f"cacheroute {benchmark} --seed 0", machine=machine_info(),
        parameters={"replicas": 2}, started_utc=started, chart=chart, directory=directory,
        results=rows if rows is not None else [
            {"policy": "cacheroute", "hit_rate": 0.5, "ttft_p50_s": math.nan,
             "outcomes": {"spill": 1, "owner_hit": 9}}])
    assert path is not None
    return path


def test_a_result_file_holds_the_whole_schema(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert path.name == "sim-tenants-2026-12-07.json"
    data = json.loads(path.read_text())
    assert set(data) == {"schema", "benchmark", "workload", "revision", "machine", "command",
                         "started_utc", "ended_utc", "parameters", "results", "summary",
                         "chart"}
    assert data["schema"] == results.SCHEMA_VERSION
    assert data["started_utc"] == "2026-12-07T10:00:00Z"
    assert data["ended_utc"] > data["started_utc"]
    assert len(data["revision"]["commit"]) == 40 and isinstance(data["revision"]["dirty"], bool)
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["python"]
    assert "ray" in machine["packages"]
    # NaN (no samples) is written as null, which JSON can hold.
    assert data["results"][0]["ttft_p50_s"] is None
    assert data["command"] == "cacheroute sim --seed 0"
    results.validate(path.name, data)


def test_a_chart_is_copied_beside_the_result(tmp_path: Path) -> None:
    chart = tmp_path / "out" / "live.png"
    chart.parent.mkdir()
    chart.write_bytes(b"png")
    path = write(tmp_path / "results", benchmark="live", chart=chart)
    data = json.loads(path.read_text())
    assert data["chart"] == "live-tenants-2026-12-07.png"
    assert (path.parent / data["chart"]).read_bytes() == b"png"


def test_writing_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(results.ENV_DIR, str(tmp_path / "elsewhere"))
    assert results.results_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv(results.ENV_DIR, "")
    assert results.results_dir() is None
    assert results.write_result("sim", "tenants", command="c", machine=machine_info(),
                                parameters={}, results=[]) is None
    monkeypatch.delenv(results.ENV_DIR)
    assert results.results_dir() == results.RESULTS_DIR


def test_names_are_slugged() -> None:
    assert results.slug("trace-My Trace.v2") == "trace-my-trace.v2"
    assert results.slug("///") == "default"


def test_the_newest_result_per_benchmark_and_workload_wins(tmp_path: Path) -> None:
    write(tmp_path, started=START, rows=[{"policy": "old"}])
    write(tmp_path, started=START + dt.timedelta(days=1), rows=[{"policy": "new"}])
    write(tmp_path, workload="trace-x", rows=[{"policy": "other"}])
    current = results.newest(results.load_results(tmp_path))
    assert [(r.key, r.data["results"][0]["policy"]) for r in current] == [
        (("sim", "tenants"), "new"), (("sim", "trace-x"), "other")]


def test_the_page_is_deterministic_and_names_revision_machine_and_command(
        tmp_path: Path) -> None:
    write(tmp_path)
    write(tmp_path, benchmark="decision_cost", workload="tenant-prompts",
          rows=[{"name": "cacheroute select (packed ids)", "prompt_tokens": 4096,
                 "block_size": 128, "replicas": 2, "p50_us": 10.0, "p99_us": 20.0, "n": 2000}])
    loaded = results.load_results(tmp_path)
    page = results.render(loaded)
    shuffled = list(loaded)
    random.Random(1).shuffle(shuffled)
    assert results.render(shuffled) == page == results.render(results.load_results(tmp_path))
    assert "## decision_cost: tenant-prompts" in page and "## sim: tenants" in page
    assert page.index("## decision_cost") < page.index("## sim")
    assert "| cacheroute select (packed ids) | 4,096 | 128 | 2 | 10.0 | 20.0 | 2,000 |" in page
    assert "| cacheroute | 50.0% | - |" in page and "owner_hit 9, spill 1" in page
    assert "- Command: `cacheroute sim --seed 0`" in page
    assert "(results/sim-tenants-2026-12-07.json)" in page
    assert "- Machine: " in page and "- Revision: `" in page


def test_a_broken_file_is_named_with_its_field(tmp_path: Path) -> None:
    path = write(tmp_path)
    data = json.loads(path.read_text())
    del data["machine"]["cores"]
    path.write_text(json.dumps(data))
    with pytest.raises(results.ResultFormatError,
                       match=r"sim-tenants-2026-12-07.json: .*machine.cores"):
        results.load_results(tmp_path)
    assert results.main(["--results-dir", str(tmp_path), "--page", str(tmp_path / "r.md")]) == 2


def test_check_reports_a_stale_page(tmp_path: Path) -> None:
    write(tmp_path)
    page = tmp_path / "results.md"
    argv = ["--results-dir", str(tmp_path), "--page", str(page)]
    assert results.main([*argv, "--check"]) == 1
    assert results.main(argv) == 0
    assert results.main([*argv, "--check"]) == 0


def test_a_sim_run_writes_its_result_file(tmp_path: Path) -> None:
    from bench.sim.cli import main

    assert main(["--replicas", "2", "--tenants", "3", "--requests", "20", "--rate", "4",
                 "--system-prompt-words", "40", "--block-size", "16", "--policies",
                 "cacheroute,pow2", "--no-progress"]) == 0
    (path,) = (tmp_path / "results").glob("sim-tenants-*.json")
    result = results.validate(path.name, json.loads(path.read_text()))
    assert [r["policy"] for r in result.data["results"]] == ["cacheroute", "pow2"]
    assert result.data["parameters"]["fleet"]["replicas"] == 2
    assert result.data["command"].startswith("cacheroute sim --replicas 2")


def test_a_live_report_writes_its_result_file(tmp_path: Path) -> None:
    from bench.live import build_parser, workload_description, write_outputs
    from bench.replay import RequestResult
    from bench.report import summarise

    args = build_parser().parse_args(["--workload", "sessions", "--rate", "0.5",
                                      "--out-dir", str(tmp_path / "out")])
    done = RequestResult(index=0, policy="pow2", tenant="s0", sent_s=0.0, done_s=1.0,
                         ttft_s=0.2, e2e_s=0.9, prompt_tokens=300, cached_tokens=256,
                         completion_tokens=8, error=None)
    summaries = [summarise("pow2", [done], oracle_hit_rate=0.9)]
    write_outputs(args, machine_info(), "cacheroute bench --workload sessions",
                  workload_description("sessions", args, 1), summaries, {"pow2": [0.2]},
                  {"pow2": [(0.0, {"r1": 1.0})]}, {}, capacity_blocks=728)
    (path,) = (tmp_path / "results").glob("live-sessions-*.json")
    data = results.validate(path.name, json.loads(path.read_text())).data
    assert data["results"][0]["hit_rate"] == pytest.approx(256 / 300)
    assert data["parameters"]["service"]["replicas"] == 2
    assert data["parameters"]["workload"]["capacity_oracle_blocks"] == 728
    if data["chart"] is not None:  # matplotlib installed: the chart travels with the file
        assert (path.parent / data["chart"]).is_file()


def test_committed_results_page_is_up_to_date() -> None:
    """docs/benchmarks/results.md is generated from the committed result files."""
    committed = results.load_results(results.RESULTS_DIR)
    assert committed, "docs/benchmarks/results/ holds no result file"
    assert results.RESULTS_PAGE.read_text(encoding="utf-8") == results.render(committed), (
        "docs/benchmarks/results.md is stale: run `make results`")
