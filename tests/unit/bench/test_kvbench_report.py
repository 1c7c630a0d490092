"""kvbench's Markdown table and chart, from hand-made records."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.kv_generate import TurnRecord
from bench.kvbench_report import markdown_table, write_chart
from bench.kvbench_service import ServiceTurn

MIB = 2**20


def make_record(turn: int, *, use_cache: bool, kv_bytes: int = 0,
                formula_bytes: int | None = None) -> TurnRecord:
    return TurnRecord(use_cache=use_cache, turn=turn, context_tokens=100 * turn,
                      prefill_tokens=10 if use_cache else 100 * turn, generated_tokens=8,
                      kv_cache_tokens=kv_bytes // 1000, kv_cache_bytes=kv_bytes,
                      kv_formula_bytes=kv_bytes if formula_bytes is None else formula_bytes,
                      ttft_s=0.01 * turn, tpot_s=0.002, turn_s=0.05, ttft_cpu_s=0.009 * turn,
                      tpot_cpu_s=0.0015 if use_cache else 0.003, rss_bytes=900 * MIB,
                      peak_rss_bytes=1000 * MIB, peak_rss_growth_bytes=2 * MIB, text="x")


def test_table_has_one_row_per_turn_with_both_modes_side_by_side() -> None:
    records = [make_record(1, use_cache=True, kv_bytes=3 * MIB),
               make_record(2, use_cache=True, kv_bytes=6 * MIB, formula_bytes=5 * MIB),
               make_record(1, use_cache=False), make_record(2, use_cache=False)]
    lines = markdown_table(records).splitlines()
    assert len(lines) == 2 + 2
    assert lines[2] == ("| 1 | 100 | 3.0 | yes | 10.0 / 10.0 | 2.0 / 2.0 | 1.5 / 3.0 | "
                        "1,000.0 (+2.0) / 1,000.0 (+2.0) |")
    assert "| **no** |" in lines[3]  # a size that disagrees with the formula is flagged


def test_chart_is_written_with_and_without_service_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    records = [make_record(t, use_cache=c, kv_bytes=t * MIB if c else 0)
               for c in (True, False) for t in (1, 2, 3)]
    service = [ServiceTurn(run="prefix-caching-on", prefix_caching=True, turn=t,
                           prompt_tokens=100 * t, cached_tokens=64 * (t - 1),
                           completion_tokens=8, ttft_s=0.1, e2e_s=0.3, error=None)
               for t in (1, 2, 3)]
    write_chart(tmp_path / "a.png", records, title="t")
    write_chart(tmp_path / "b.png", records, service, title="t")
    write_chart(tmp_path / "c.png", [], service, title="t")
    assert all((tmp_path / f"{n}.png").stat().st_size > 0 for n in "abc")
    with pytest.raises(ValueError):
        write_chart(tmp_path / "d.png", [], [], title="t")
