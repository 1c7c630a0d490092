"""Live policy comparison: the same multi-tenant trace through each routing policy.

    python -m bench.live --policies pow2,ray-prefix,cacheroute --tenants 8 \\
        --requests 200 --rate 2 --zipf 1.1 --seed 0 --json out/bench-live/live.json

For each policy in turn: start a fresh ``cacheroute serve --policy P`` (cold
caches, empty router state; ``service.py``), wait for its ready line (every
replica warm), replay the trace (``replay.py``: open-loop Poisson arrivals at
``--rate``, or ``--concurrency`` workers), stop the service completely, then the
next policy. All policies see byte-identical requests in the same order and at
the same offsets; the trace is saved as ``trace.jsonl`` in ``--out-dir`` and can
be replayed with ``--trace``.

The oracle hit rate (``oracle.py``) is computed from the trace's prompt token
ids, tokenised the way vLLM's frontend does (``serving.prompt_tokens``), with
the engine's block size. The run also counts requests whose ``prompt_tokens`` as
reported by the server differ from that tokenisation, a check that the oracle
counts the same tokens the engines saw.

Outputs in ``--out-dir``: ``trace.jsonl``, ``<policy>/requests.jsonl`` (one line
per request), ``<policy>/serve.log``, ``live.png`` (TTFT CDF and hit rates) and
``live.json`` (or ``--json PATH``); the Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.machine import describe, machine_info
from bench.oracle import DEFAULT_ORACLE_BLOCK_SIZE, oracle_hits
from bench.replay import RequestResult, replay
from bench.replica_load import load_skew, settled
from bench.report import (
    PolicySummary,
    markdown_table,
    summarise,
    summary_json,
    write_chart,
)
from bench.service import ServiceError, ServiceProcess, free_port, write_config
from bench.trace import TraceFormatError, TraceRequest, load_trace, save_trace
from bench.workloads import WorkloadSpec, generate

POLICIES = ("pow2", "ray-prefix", "cacheroute")
MODEL_ID = "smollm2-135m-instruct"


def _policies(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(bad) or '(none)'}; choose from {', '.join(POLICIES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.live",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", type=_policies, default=list(POLICIES),
                   help="comma-separated, run in this order (default pow2,ray-prefix,cacheroute)")
    p.add_argument("--tenants", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="open-loop Poisson arrivals, requests/s")
    load.add_argument("--concurrency", type=int,
                      help="fixed number of requests in flight (default 4 without --rate)")
    p.add_argument("--zipf", type=float, default=1.1, help="tenant popularity exponent s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--trace", type=Path, help="replay this JSONL trace instead of generating one")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, help="service port (default: a free port per policy)")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--kv-cache-gib", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--load-epsilon", type=float,
                   help="cacheroute's bounded-load slack (default: the config default, 0.25)")
    p.add_argument("--start-timeout-s", type=float, default=900.0)
    p.add_argument("--out-dir", type=Path, default=Path("out/bench-live"))
    p.add_argument("--json", type=Path, help="summary JSON (default OUT_DIR/live.json)")
    return p


def prompt_token_ids(trace: Sequence[TraceRequest]) -> list[tuple[int, ...]]:
    """Each request's prompt as the engine tokenises it (chat template included)."""
    from serving.models import ensure_default_model
    from serving.prompt_tokens import PromptTokenizer

    tokenizer = PromptTokenizer(str(ensure_default_model()))
    out = []
    for r in trace:
        parsed = (SimpleNamespace(messages=[dict(m) for m in r.messages])
                  if r.messages is not None else SimpleNamespace(prompt=r.prompt))
        out.append(tokenizer.token_ids(parsed) or ())
    return out


def run_policy(policy: str, trace: Sequence[TraceRequest], args: argparse.Namespace,
               ) -> tuple[list[RequestResult], float | None, list[int]]:
    from tqdm import tqdm

    folder = args.out_dir / policy
    folder.mkdir(parents=True, exist_ok=True)
    port, metrics_port = args.port or free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    config = write_config(folder / "config.yaml", model_id=MODEL_ID, policy=policy,
                          replicas=args.replicas, port=port, metrics_port=metrics_port,
                          ready_timeout_s=args.start_timeout_s,
                          max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                          max_num_seqs=args.max_num_seqs, load_epsilon=args.load_epsilon)
    service = ServiceProcess(config_path=config, policy=policy, port=port,
                             log_path=folder / "serve.log",
                             start_timeout_s=args.start_timeout_s + 60)
    print(f"[{policy}] starting the service (cold; this takes minutes on CPU)...",
          file=sys.stderr, flush=True)
    with service:
        print(f"[{policy}] ready after {service.startup_s:.0f} s at {service.base_url}; "
              f"replaying {len(trace)} requests", file=sys.stderr, flush=True)
        before = settled(metrics_url)
        with tqdm(total=len(trace), unit="req", desc=policy, file=sys.stderr) as bar:
            results = asyncio.run(replay(
                trace, base_url=service.base_url, model=MODEL_ID, policy=policy,
                concurrency=args.concurrency, on_done=lambda _: bar.update(1)))
        after = settled(metrics_url)
        per_replica = {r: after[r] - before.get(r, 0.0) for r in after}
        skew = load_skew(before, after, args.replicas)
        (folder / "replica_load.json").write_text(json.dumps(
            {"requests_by_replica": per_replica, "load_skew": skew}, indent=2) + "\n")
        print(f"[{policy}] stopping the service", file=sys.stderr, flush=True)
    if service.stragglers_killed:
        print(f"[{policy}] ended leftover processes of this run: {service.stragglers_killed}",
              file=sys.stderr)
    with (folder / "requests.jsonl").open("w", encoding="utf-8") as out:
        for r in results:
            out.write(json.dumps(asdict(r)) + "\n")
    return results, service.startup_s, service.stragglers_killed, skew, per_replica


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate is None and args.concurrency is None:
        args.concurrency = 4
    machine = machine_info()
    command = shlex.join(["python", "-m", "bench.live",
                          *(sys.argv[1:] if argv is None else argv)])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.trace is not None:
            trace = load_trace(args.trace)
        else:
            trace = generate(WorkloadSpec(tenants=args.tenants, requests=args.requests,
                                          zipf_s=args.zipf, seed=args.seed,
                                          rate_rps=args.rate, max_tokens=args.max_tokens))
    except (TraceFormatError, ValueError, OSError) as err:
        print(f"bench.live: {err}", file=sys.stderr)
        return 2
    if not trace:
        print("bench.live: the trace is empty", file=sys.stderr)
        return 2
    save_trace(args.out_dir / "trace.jsonl", trace)

    token_ids = prompt_token_ids(trace)
    oracle = oracle_hits(token_ids, block_size=DEFAULT_ORACLE_BLOCK_SIZE)
    print(f"machine: {describe(machine)}\ntrace: {len(trace)} requests, "
          f"{oracle.prompt_tokens:,} prompt tokens, oracle hit rate {oracle.hit_rate:.1%}",
          file=sys.stderr)

    summaries: list[PolicySummary] = []
    results_by_policy: dict[str, list[RequestResult]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for policy in args.policies:
        try:
            results, startup_s, stragglers, skew, per_replica = run_policy(policy, trace, args)
        except ServiceError as err:
            print(f"bench.live: {err}", file=sys.stderr)
            return 1
        results_by_policy[policy] = results
        summaries.append(summarise(policy, results, oracle_hit_rate=oracle.hit_rate,
                                   startup_s=startup_s))
        mismatched = sum(1 for r in results
                         if r.prompt_tokens is not None
                         and r.prompt_tokens != len(token_ids[r.index]))
        extra[policy] = {"prompt_tokens_mismatch": mismatched,
                         "stragglers_killed": len(stragglers),
                         "load_skew": skew, "requests_by_replica": per_replica}

    load = (f"Poisson {args.rate} req/s" if args.rate is not None
            else f"concurrency {args.concurrency}")
    title = (f"{len(trace)} requests, {args.tenants} tenants, zipf {args.zipf}, {load}, "
             f"{args.replicas} replicas -- {describe(machine)}")
    json_path = args.json or args.out_dir / "live.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({
        "machine": machine,
        "command": command,
        "workload": {"requests": len(trace), "tenants": args.tenants, "zipf_s": args.zipf,
                     "seed": args.seed, "rate_rps": args.rate, "concurrency": args.concurrency,
                     "replicas": args.replicas, "trace": str(args.trace or "generated"),
                     "oracle_block_size": DEFAULT_ORACLE_BLOCK_SIZE},
        "results": [{**summary_json(s), **extra[s.policy]} for s in summaries],
    }, indent=2) + "\n")
    print(f"Machine: {describe(machine)}\nWorkload: {title.split(' -- ')[0]}\n")
    print(markdown_table(summaries))
    print("\nLoad skew (max/mean requests per replica): " + ", ".join(
        f"{p} {extra[p]['load_skew']:.2f}" if extra[p]["load_skew"] is not None else f"{p} n/a"
        for p in args.policies))
    chart = args.out_dir / "live.png"
    try:
        write_chart(chart, summaries, results_by_policy, title=title)
    except ImportError:  # matplotlib is optional; the numbers are already written
        print("bench.live: no chart (pip install matplotlib)", file=sys.stderr)
        chart_note = "no chart"
    else:
        chart_note = str(chart)
    print(f"\nwrote {json_path}, {chart_note}, per-request data in {args.out_dir}/<policy>/",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
