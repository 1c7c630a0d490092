"""`cacheroute kvbench`: the results JSON from a real (tiny) run, and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import build_parser
from serving.cli import main as cli_main

RECORD_KEYS = {
    "use_cache", "turn", "context_tokens", "prefill_tokens", "generated_tokens",
    "kv_cache_tokens", "kv_cache_bytes", "kv_formula_bytes", "ttft_s", "tpot_s", "turn_s",
    "ttft_cpu_s", "tpot_cpu_s",
    "rss_bytes", "peak_rss_bytes", "peak_rss_growth_bytes", "text",
}


def test_a_short_run_writes_one_record_per_turn_and_mode(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    json_path = tmp_path / "kv.json"
    code = cli_main(["kvbench", "--turns", "2", "--new-tokens", "2", "--threads", "1",
                     "--json", str(json_path), "--out-dir", str(tmp_path / "out")])
    assert code == 0
    data = json.loads(json_path.read_text())
    assert {"machine", "command", "model", "settings", "runs", "kv_shape", "records",
            "service_records", "kv_bytes_match_formula", "greedy_texts_identical"} <= set(data)
    assert [(r["use_cache"], r["turn"]) for r in data["records"]] \
        == [(True, 1), (True, 2), (False, 1), (False, 2)]
    assert all(set(r) == RECORD_KEYS for r in data["records"])
    assert data["kv_bytes_match_formula"] is True
    assert data["greedy_texts_identical"] is True
    assert data["kv_shape"]["bytes_per_token"] == 46_080
    assert data["settings"] == {"turns": 2, "new_tokens": 2, "dtype": "float32", "seed": 0,
                                "threads": 1}
    assert [(r["use_cache"], r["torch_threads"]) for r in data["runs"]] == [(True, 1), (False, 1)]
    assert data["service_records"] == []
    assert data["command"].startswith("cacheroute kvbench --turns 2")
    assert (tmp_path / "out" / "kvbench.png").stat().st_size > 0
    table = (tmp_path / "out" / "kvbench.md").read_text()
    assert "| 2 |" in table and "yes" in table


@pytest.mark.parametrize(("args", "message"), [
    (["--turns", "0"], "--turns must be between 1 and 50, got 0"),
    (["--turns", "51"], "--turns must be between 1 and 50"),
    (["--turns", "ten"], "argument --turns: invalid int value: 'ten'"),
    (["--new-tokens", "1"], "--new-tokens must be between 2 and 512"),
    (["--model", "/no/such/model"], "--model /no/such/model: no such folder"),
    (["--model", "./relative/missing"], "--model ./relative/missing: no such folder"),
    (["--no-local"], "--no-local leaves nothing to run"),
    (["--prefix-caching", "on"], "--prefix-caching labels a --url run"),
    (["--url", "http://x", "--service", "both"], "not allowed with argument"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli_main(["kvbench", *args])
    except SystemExit as stop:  # argparse's own errors
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cacheroute kvbench: error: ")
    assert message in err


def test_a_model_folder_without_config_is_rejected(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["kvbench", "--model", str(tmp_path)]) == 2
    assert "no config.json in that folder" in capsys.readouterr().err


def test_the_console_command_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "kvbench", "--model",
                           str(tmp_path / "missing"), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"cacheroute kvbench: error: --model {tmp_path / 'missing'}: " \
                          "no such folder\n"
    assert proc.stdout == ""


def test_kvbench_is_listed_in_the_main_help() -> None:
    assert "kvbench" in build_parser().format_help()
