"""bench.decision_rate: the core-alone loop runs and reports a rate."""

from __future__ import annotations

import pytest

from bench.decision_rate import decision_rate, main


def test_decision_rate_is_positive_and_the_cli_prints_a_row(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert decision_rate(4, 300) > 0
    assert main(["--replicas", "3", "--decisions", "200", "--repeat", "1"]) == 0
    assert "| 3 |" in capsys.readouterr().out
