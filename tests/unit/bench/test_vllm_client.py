"""bench.vllm_client: the flags handed to `vllm bench serve`, and parsing what it saves.

`data/vllm_bench_prefix_repetition.json` was written by vLLM 0.32's own client
(`python -m bench.vllm_client --vllm-bench-serve ...`, openai-chat backend,
prefix_repetition with 6 prompts over 2 prefixes, --save-result --save-detailed)
against the fake chat server of `kvbench_fake_server.py`; only the tokenizer path
was replaced by the model's name.
"""

from __future__ import annotations

import json
import math
from argparse import Namespace
from itertools import pairwise
from pathlib import Path

import pytest

from bench.report import markdown_table, summary_json
from bench.vllm_client import client_argv, parse_result, summary_of

RECORDED = Path(__file__).with_name("data") / "vllm_bench_prefix_repetition.json"


def recorded() -> dict[str, object]:
    return json.loads(RECORDED.read_text(encoding="utf-8"))


def test_parse_a_recorded_result_in_seconds() -> None:
    data = recorded()
    r = parse_result(data)
    assert (r.completed, r.failed) == (6, 0)
    assert r.total_input_tokens == 993 and r.total_output_tokens == 24
    assert r.ttft_p50_s == pytest.approx(data["p50_ttft_ms"] / 1000)  # type: ignore[operator]
    assert r.ttft_p99_s == pytest.approx(data["p99_ttft_ms"] / 1000)  # type: ignore[operator]
    assert r.e2e_p90_s == pytest.approx(data["p90_e2el_ms"] / 1000)  # type: ignore[operator]
    assert r.output_throughput_tps == pytest.approx(data["output_throughput"])  # type: ignore[arg-type]
    assert len(r.ttfts_s) == 6 and all(t > 0 for t in r.ttfts_s)


def test_failed_requests_are_left_out_of_the_ttft_samples() -> None:
    data = recorded()
    data["errors"] = ["", "Internal Server Error", "", "", "", ""]
    data["failed"] = 1
    r = parse_result(data)
    assert r.failed == 1 and len(r.ttfts_s) == 5


def test_a_result_without_percentiles_or_details_parses_to_missing_values() -> None:
    r = parse_result({"completed": 0, "failed": 3, "duration": 1.5})
    assert r.ttft_p50_s is None and r.ttfts_s == ()
    s = summary_of("pow2", r, oracle_hit_rate=None, capacity_oracle_hit_rate=None)
    assert s.errors == 3 and math.isnan(s.ttft_p99_s)
    assert summary_json(s)["ttft_p99_s"] is None


def test_summary_takes_its_hit_rate_from_the_engines() -> None:
    s = summary_of("cacheroute", parse_result(recorded()), oracle_hit_rate=0.8,
                   capacity_oracle_hit_rate=0.7, engine_hit_rate=0.75, load_skew=1.1, spills=2)
    assert s.hit_rate == 0.75 and s.hit_rate_source == "engine"
    assert s.cached_tokens == round(0.75 * 993)
    assert s.requests == 6 and s.spills == 2
    assert "| cacheroute | 75.0% | 75.0% | 80.0% | 70.0% |" in markdown_table([s])


def test_client_flags() -> None:
    args = Namespace(prefix_len=512, suffix_len=32, num_prefixes=4, max_tokens=8, requests=40,
                     seed=3, rate=None, concurrency=2)
    argv = client_argv(args, base_url="http://127.0.0.1:9", tokenizer="/m", result_dir=Path("/r"))
    flags = dict(pairwise(argv))
    assert flags["--backend"] == "openai-chat" and flags["--endpoint"] == "/v1/chat/completions"
    assert flags["--dataset-name"] == "prefix_repetition"
    assert flags["--prefix-repetition-prefix-len"] == "512"
    assert flags["--num-prompts"] == "40" and flags["--max-concurrency"] == "2"
    assert "--save-result" in argv and "--save-detailed" in argv
    assert "--request-rate" not in argv
    rated = client_argv(Namespace(**{**vars(args), "rate": 0.5, "concurrency": None}),
                        base_url="u", tokenizer="/m", result_dir=Path("/r"))
    assert "--max-concurrency" not in rated and rated[rated.index("--request-rate") + 1] == "0.5"
