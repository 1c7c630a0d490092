"""Benchmark runs in these tests write their result files to a temporary folder, never
into docs/benchmarks/results/ (bench/results.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _results_to_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEROUTE_RESULTS_DIR", str(tmp_path / "results"))
