"""bench.decision_cost (command line, report) and bench.decision_timing (the rows): their
bookkeeping, and one miniature run of the whole CLI.

The CLI run uses the tiny random-weight model's tokenizer (built in a temp folder in
seconds) and skips the Ray actor, so it needs no cluster and no default model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.decision_cost import main, markdown_table, target_check
from bench.decision_timing import Row, Timer, make_row


class CountingBar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


def test_timer_times_every_call_and_reports_progress() -> None:
    bar = CountingBar()
    seen: list[int] = []
    samples = Timer(bar).run(250, lambda i: i * 2, seen.append, offset=10)
    assert len(samples) == 250 and all(s >= 0 for s in samples)
    assert bar.n == 250
    # Warm-up calls come first, then every prepared argument once, in order.
    assert seen[-250:] == [2 * (10 + i) for i in range(250)]


def test_rows_table_and_target_check() -> None:
    fast = make_row("cacheroute select (packed ids)", [10.0, 20.0, 30.0], tokens=4096,
                    block_size=128, replicas=2)
    slow = make_row("cacheroute select (packed ids)", [100.0, 500.0], tokens=4096,
                    block_size=16, replicas=2)
    # The tuple rows are reported beside the target, not checked against it.
    tuples = make_row("cacheroute select (token ids)", [900.0, 990.0], tokens=4096,
                      block_size=128, replicas=2)
    every = make_row("cacheroute select (packed ids, every block written)", [700.0],
                     tokens=4096, block_size=16, replicas=2)
    other = make_row("tokenize only (PromptTokenizer)", [9000.0], tokens=4096, block_size=None,
                     replicas=None)
    assert (fast.p50_us, fast.n, fast.max_us) == (20.0, 3, 30.0)
    check = target_check([fast, slow, tuples, every, other])
    assert check["met"] is False and check["worst_p99_us"] == slow.p99_us
    assert check["token_ids_worst_p99_us"] == tuples.p99_us
    assert check["every_block_worst_p99_us"] == every.p99_us
    assert target_check([fast, tuples, every])["met"] is True
    assert target_check([tuples])["met"] is False  # nothing packed was measured
    table = markdown_table([fast, other])
    assert "| cacheroute select (packed ids) | 4,096 | 128 | 2 | 20.0 |" in table
    assert "| tokenize only (PromptTokenizer) | 4,096 | - | - |" in table


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_miniature_run_writes_every_row(tiny_model: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dc.json"
    code = main(["--n", "30", "--sizes", "256", "--block-sizes", "16", "--replicas", "2,3",
                 "--timed-tenants", "2", "--warm-tenants", "2", "--no-actor", "--no-profile",
                 "--model-dir", str(tiny_model), "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["machine"]["nproc"] >= 1 and data["machine"]["python"]
    names = {(r["name"], r["replicas"]) for r in data["rows"]}
    assert ("cacheroute select (token ids)", 3) in names
    assert ("cacheroute select (packed ids)", 3) in names
    assert ("cacheroute select (packed ids, every block written)", 3) in names
    assert ("cacheroute hash only, packed ids (PrefixHasher)", None) in names
    assert ("control: pack the ids (no router)", None) in names
    assert ("cacheroute tokenize+select (text)", 2) in names
    assert ("ray PrefixTree match+insert (direct)", 2) in names
    assert ("ray PrefixTree prefix_match only (direct)", 3) in names
    assert all(set(r) >= set(Row.__dataclass_fields__) for r in data["rows"])
    selects = [r for r in data["rows"] if r["name"].startswith("cacheroute select")]
    # Every timed prompt starts with an owned tenant prefix, packed or not.
    assert len(selects) == 6
    assert all(r["outcomes"] == {"OWNER_HIT": 30 + 20} for r in selects)
    assert data["target"]["what"].startswith("p99 of cacheroute select from packed")
    assert "| name | prompt tokens |" in capsys.readouterr().out
