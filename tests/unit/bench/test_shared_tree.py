"""`python -m bench.shared_tree`: its pure parts (the Ray run is a benchmark, not a test)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.shared_tree import Caller, build_parser, markdown, write_chart


def test_bad_counts_are_refused_by_the_parser() -> None:
    parser = build_parser()
    assert parser.parse_args(["--ingresses", "1,4"]).ingresses == [1, 4]
    for bad in (["--ingresses", "0"], ["--ingresses", "two"], ["--n", "0"], ["--n", "1,2"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_a_cacheroute_caller_times_each_decision_on_its_own_policy() -> None:
    prefix = tuple(range(1, 257))  # two 128-token blocks
    prompts = [prefix + (1000 + i, 2000 + i) for i in range(5)]
    samples, ended = Caller().cacheroute(prompts, [prefix], ["r0", "r1"], 128, time.time())
    assert len(samples) == 5 and all(s > 0 for s in samples)
    assert ended <= time.time()


def test_table_and_chart(tmp_path: Path) -> None:
    points = [{"policy": p, "ingresses": k, "decisions": 10, "p50_us": 10.0 * k,
               "p99_us": 20.0 * k, "decisions_per_s": 1000.0 / k, "wall_s": 0.01}
              for p in ("ray-prefix", "cacheroute") for k in (1, 2)]
    table = markdown(points)
    assert table.count("\n") == 5 and "| 2 | cacheroute | 20.0 | 40.0 | 500 |" in table
    chart = tmp_path / "shared-tree.png"
    write_chart(chart, points, "test")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
