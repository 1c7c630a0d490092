"""bench.compare_runs: policies from several bench folders in one table and chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compare_runs import main


def write_run(folder: Path, policy: str, *, hit_rate: float, oracle: float,
              ttfts: list[float]) -> None:
    (folder / policy).mkdir(parents=True)
    row = {"policy": policy, "requests": len(ttfts), "errors": 0, "hit_rate": hit_rate,
           "oracle_hit_rate": oracle, "prompt_tokens": 100, "cached_tokens": 50,
           "ttft_p50_s": sorted(ttfts)[len(ttfts) // 2], "ttft_p90_s": max(ttfts),
           "ttft_p99_s": max(ttfts), "e2e_p50_s": 1.0, "throughput_rps": 1.0,
           "duration_s": 10.0, "missing_usage": 0, "e2e_p90_s": None, "spills": 3,
           "decisions": {"spill": 3}}  # a key PolicySummary does not have
    (folder / "live.json").write_text(json.dumps(
        {"command": f"cacheroute bench --out-dir {folder}", "results": [row]}))
    records = [{"ttft_s": t, "error": None} for t in ttfts] + [{"ttft_s": None,
                                                               "error": "boom"}]
    (folder / policy / "requests.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n")


def test_two_runs_become_one_table_and_one_chart(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "a", "cacheroute", hit_rate=0.48, oracle=0.62, ttfts=[1.0, 2.0, 3.0])
    write_run(tmp_path / "b", "cacheroute", hit_rate=0.62, oracle=0.62, ttfts=[0.2, 0.4])
    chart = tmp_path / "chart.png"
    assert main(["defaults=" + str(tmp_path / "a" / "cacheroute"),
                 "floor 4=" + str(tmp_path / "b" / "cacheroute"),
                 "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "| defaults | 48.0%" in out and "| floor 4 | 62.0%" in out
    assert f"cacheroute bench --out-dir {tmp_path / 'b'}" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec", ["no-label", "=x/cacheroute", "label=", "x=a/.."])
def test_a_malformed_argument_is_one_line_and_exit_2(
        spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compare_runs:") and err.count("\n") == 1


def test_runs_of_different_traces_or_missing_folders_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "a", "pow2", hit_rate=0.2, oracle=0.62, ttfts=[1.0])
    write_run(tmp_path / "b", "pow2", hit_rate=0.3, oracle=0.75, ttfts=[1.0])
    assert main([f"a={tmp_path / 'a' / 'pow2'}", f"b={tmp_path / 'b' / 'pow2'}"]) == 2
    assert "different oracle hit rates" in capsys.readouterr().err
    assert main([f"a={tmp_path / 'a' / 'ray-prefix'}"]) == 2
    assert "no 'ray-prefix' row" in capsys.readouterr().err
    assert main([f"a={tmp_path / 'missing' / 'pow2'}"]) == 2
    assert "not a cacheroute bench output folder" in capsys.readouterr().err
