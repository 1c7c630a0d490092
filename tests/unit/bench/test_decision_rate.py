"""bench.decision_rate: the core-alone loop runs and reports a rate."""

from __future__ import annotations

import pytest

from bench.decision_rate import decision_rate, main


def test_decision_rate_is_positive_and_the_cli_prints_a_row(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert decision_rate(4, 300) > 0
    assert main(["--replicas", "3", "--decisions", "200", "--repeat", "1"]) == 0
    assert "| 3 |" in capsys.readouterr().out


def test_reads_between_decisions_run_and_a_negative_count_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert decision_rate(4, 300, between=50) > 0
    assert main(["--replicas", "3", "--decisions", "200", "--repeat", "1",
                 "--between", "10"]) == 0
    assert "| 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--between", "-1"])
    assert exit_info.value.code == 2
    assert "--between must be >= 0" in capsys.readouterr().err
