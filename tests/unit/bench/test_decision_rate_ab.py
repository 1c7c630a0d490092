"""bench.decision_rate_ab: two router/ trees run interleaved, decide alike, and the
process keeps its own router modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import router
import router.load  # sys.modules["router.load"] is read before and after
from bench.decision_rate_ab import compare, main

# The folder holding this checkout's router/.
_TREE = str(Path(router.__file__).resolve().parent.parent)


def test_one_tree_against_itself_decides_alike_and_leaves_router_alone(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = sys.modules["router.load"].InFlightCounts
    rates = compare([_TREE, _TREE], replicas=4, decisions=600)
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    # The trees' modules were their own: the process's router is the one it had.
    assert sys.modules["router.load"].InFlightCounts is before
    assert sys.modules["router"] is router
    assert main([_TREE, _TREE, "--replicas", "3", "--decisions", "300"]) == 0
    assert capsys.readouterr().out.startswith("| 3 |")


def test_trees_that_decide_differently_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "router"
    other.mkdir()
    for source in Path(_TREE, "router").glob("*.py"):
        text = source.read_text()
        if source.name == "load.py":  # a looser bound: other replicas get chosen
            text = text.replace("(1.0 + epsilon)", "(3.0 + epsilon)")
        (other / source.name).write_text(text)
    with pytest.raises(AssertionError, match="decided differently"):
        compare([_TREE, str(tmp_path)], replicas=8, decisions=2000)


def test_reads_between_decisions_leave_the_decisions_alike(
        capsys: pytest.CaptureFixture[str]) -> None:
    rates = compare([_TREE, _TREE], replicas=4, decisions=300, between=20)
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    with pytest.raises(SystemExit):
        main([_TREE, _TREE, "--between", "-5"])
    assert "--between must be >= 0" in capsys.readouterr().err
