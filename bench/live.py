"""Live policy comparison: the same requests through each routing policy's service.

    cacheroute bench --workload tenants --tenants 8 --requests 120 --rate 0.5
    cacheroute bench --workload sessions --sessions 12 --turns 6 --rate 0.5
    cacheroute bench --workload documents --documents 6 --requests 80 --rate 0.4
    cacheroute bench --workload trace --trace out/trace.jsonl --concurrency 2
    cacheroute bench --workload vllm-prefix-repetition --requests 60 --concurrency 2

Workloads (all seeded; ``--dry-run`` writes the trace and its oracles and stops):
``tenants`` (``workloads.py``: Zipf-popular tenants with long system prompts),
``sessions`` (``chat_sessions.py``: multi-turn chats resending their history),
``documents`` (``documents_qa.py``: few long documents, many questions each),
``trace`` (a JSONL file, ``trace.py``), and ``vllm-prefix-repetition``: vLLM's
own benchmark client with its ``prefix_repetition`` dataset (``vllm_client.py``),
a load nobody here designed.

For each policy in turn (``policy_run.py``): a fresh ``cacheroute serve --policy P``
(cold caches, empty router state; every replica warm before it is used), the
same requests at the same offsets (``replay.py``: open-loop Poisson arrivals at
``--rate``, or ``--concurrency`` workers), ``/metrics`` read before and after and
sampled each second, then a complete stop before the next policy.

A policy named ``PACKAGE:POLICY`` is a peer router users deploy instead
(``vllm-router:kv_aware``, ``vllm-router:consistent_hash``, ``sglang:cache_aware``;
``peers.py``): the pinned router in front of plain vLLM servers started with the
service's engine arguments (``peer_run.py``), measured the same way; its row
records the router's package and version, and cacheroute's router counters read
"not measured" (None) there.

The oracles (``oracle.py``) come from the trace's prompt token ids, tokenised the
way vLLM's frontend does (``serving.routing.prompt_tokens``) with the engine's block
size: an infinite shared cache, and one bounded by the fleet's KV capacity
(replicas x blocks per replica, from ``--kv-cache-gib`` and the model's
``config.json`` as ``bench/sim/engine.py`` computes it). The run also counts
requests whose server-reported ``prompt_tokens`` differ from that tokenisation.

Outputs in ``--out-dir``: ``trace.jsonl``, per policy ``<policy>/requests.jsonl``,
``service_metrics.json`` and ``serve.log``; ``live.png`` (TTFT CDF, hit rates),
``replica_load.png`` (in-flight per replica over time) and ``live.json`` (or
``--json PATH``: ``{"results": [{"policy": ..., "hit_rate": ...}, ...]}``); the
Markdown table goes to stdout.
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

from bench import chat_sessions, documents_qa
from bench.cli_args import policy_list
from bench.machine import describe, machine_info
from bench.oracle import (
    DEFAULT_ORACLE_BLOCK_SIZE,
    capacity_oracle_hits,
    default_model_config,
    fleet_capacity_blocks,
    oracle_hits,
)
from bench.peer_run import run_peer_measured
from bench.peers import PEERS, is_peer
from bench.policy_run import MODEL_ID, run_measured, settings_from
from bench.replay import replay
from bench.report import PolicySummary, summarise, workload_description, write_outputs
from bench.service import ServiceError
from bench.trace import TraceFormatError, TraceRequest, load_trace, save_trace
from bench.workloads import WorkloadSpec, generate
from router import PolicyConfig

POLICIES = ("pow2", "ray-prefix", "cacheroute", "random")
DEFAULT_REQUESTS = 200
WORKLOADS = ("tenants", "sessions", "documents", "trace", "vllm-prefix-repetition")


# cacheroute's policies, and the peer routers users deploy instead (bench/peers.py).
_policies = policy_list((*POLICIES, *PEERS))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cacheroute bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=WORKLOADS,
                   help="default: trace with --trace, else tenants")
    p.add_argument("--policies", type=_policies, default=list(POLICIES),
                   help=f"comma-separated, run in this order (default {','.join(POLICIES)}); "
                        f"peer routers: {','.join(PEERS)}")
    p.add_argument("--requests", type=int,
                   help="requests (tenants, documents) or prompts (vllm-prefix-repetition); "
                        f"default {DEFAULT_REQUESTS}, or tenants x --per-tenant")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="open-loop Poisson arrivals, requests/s")
    load.add_argument("--concurrency", type=int,
                      help="fixed number of requests in flight (default 4 without --rate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=8, help="generated tokens per request")
    tenants = p.add_argument_group("tenants")
    tenants.add_argument("--tenants", type=int, default=8)
    tenants.add_argument("--zipf", type=float, default=None,
                         help="popularity exponent s of tenants (1.1) or documents (0.8)")
    tenants.add_argument("--per-tenant", type=int,
                         help="every tenant sends exactly N requests, in a seeded random "
                              "order, instead of Zipf picks (requests = tenants x N)")
    sessions = p.add_argument_group("sessions (requests = sessions x turns)")
    sessions.add_argument("--sessions", type=int, default=16)
    sessions.add_argument("--turns", type=int, default=6)
    sessions.add_argument("--think-s", type=float, default=10.0,
                          help="mean gap between a session's turns")
    documents = p.add_argument_group("documents")
    documents.add_argument("--documents", type=int, default=6)
    documents.add_argument("--document-words", type=int,
                           default=documents_qa.DEFAULT_DOCUMENT_WORDS)
    p.add_argument("--trace", type=Path, help="the JSONL trace of --workload trace")
    vllm = p.add_argument_group("vllm-prefix-repetition (vLLM's dataset flags)")
    vllm.add_argument("--prefix-len", type=int, default=1024)
    vllm.add_argument("--suffix-len", type=int, default=64)
    vllm.add_argument("--num-prefixes", type=int, default=6)
    svc = p.add_argument_group("service")
    svc.add_argument("--replicas", type=int, default=2)
    svc.add_argument("--port", type=int, help="service port (default: a free port per policy)")
    svc.add_argument("--max-num-seqs", type=int, default=8)
    svc.add_argument("--kv-cache-gib", type=int, default=1)
    svc.add_argument("--max-model-len", type=int, default=4096)
    defaults = PolicyConfig()
    svc.add_argument("--load-epsilon", type=float,
                     help="cacheroute's bounded-load slack "
                          f"(default: the config default, {defaults.load_epsilon})")
    svc.add_argument("--load-floor", type=int,
                     help="requests in flight a replica always has room for (routing."
                          f"load_floor; default: the config default, {defaults.load_floor}; "
                          "0: the bound alone)")
    svc.add_argument("--replicate", dest="replicate_before_spill",
                     action=argparse.BooleanOptionalAction, default=None,
                     help="cacheroute's replication ahead of a spill "
                          "(routing.replicate_before_spill; default: the config default, off)")
    svc.add_argument("--spill-wait-s", type=float,
                     help="cacheroute's longest wait for an owner before a spill "
                          "(routing.spill_wait_s; default: the config default, 0: off)")
    svc.add_argument("--start-timeout-s", type=float, default=900.0)
    p.add_argument("--out-dir", type=Path, default=Path("out/bench-live"))
    p.add_argument("--json", type=Path, help="summary JSON (default OUT_DIR/live.json)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the trace and print its oracles; start no service")
    return p


def resolve_workload(args: argparse.Namespace) -> str:
    workload = args.workload or ("trace" if args.trace is not None else "tenants")
    if (workload == "trace") != (args.trace is not None):
        raise ValueError("--trace FILE goes with --workload trace (and only with it)")
    return workload


def resolve_requests(args: argparse.Namespace, workload: str) -> None:
    """Set ``args.requests`` from ``--requests`` and ``--per-tenant`` (raises ValueError
    on a combination that contradicts itself)."""
    if args.per_tenant is None:
        if args.requests is None:
            args.requests = DEFAULT_REQUESTS
        return
    if workload != "tenants":
        raise ValueError("--per-tenant goes with --workload tenants (and only with it)")
    if args.zipf is not None:
        raise ValueError("--per-tenant replaces --zipf: give one of them")
    if args.per_tenant < 1:
        raise ValueError(f"--per-tenant must be >= 1, got {args.per_tenant}")
    total = args.tenants * args.per_tenant
    if args.requests is not None and args.requests != total:
        raise ValueError(f"--requests ({args.requests}) must be --tenants x --per-tenant "
                         f"({args.tenants} x {args.per_tenant} = {total}), or left out")
    args.requests = total


def build_trace(workload: str, args: argparse.Namespace) -> list[TraceRequest]:
    """The requests of a trace workload (raises ValueError, TraceFormatError, OSError)."""
    if workload == "trace":
        return load_trace(args.trace)
    if workload == "sessions":
        return chat_sessions.generate(chat_sessions.SessionSpec(
            sessions=args.sessions, turns=args.turns, seed=args.seed, rate_rps=args.rate,
            think_s=args.think_s, max_tokens=args.max_tokens))
    if workload == "documents":
        return documents_qa.generate(documents_qa.DocumentSpec(
            documents=args.documents, requests=args.requests,
            zipf_s=0.8 if args.zipf is None else args.zipf, seed=args.seed,
            rate_rps=args.rate, document_words=args.document_words,
            max_tokens=args.max_tokens))
    return generate(WorkloadSpec(tenants=args.tenants, requests=args.requests,
                                 zipf_s=1.1 if args.zipf is None else args.zipf,
                                 per_tenant=args.per_tenant,
                                 seed=args.seed, rate_rps=args.rate,
                                 max_tokens=args.max_tokens))


def prompt_token_ids(trace: Sequence[TraceRequest]) -> list[tuple[int, ...]]:
    """Each request's prompt as the engine tokenises it (chat template included)."""
    from serving.models.default import ensure_default_model
    from serving.routing.prompt_tokens import PromptTokenizer

    tokenizer = PromptTokenizer(str(ensure_default_model()))
    out = []
    for r in trace:
        parsed = (SimpleNamespace(messages=[dict(m) for m in r.messages])
                  if r.messages is not None else SimpleNamespace(prompt=r.prompt))
        out.append(tokenizer.token_ids(parsed) or ())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate is None and args.concurrency is None:
        args.concurrency = 4
    try:
        workload = resolve_workload(args)
        resolve_requests(args, workload)
    except ValueError as err:
        print(f"cacheroute bench: {err}", file=sys.stderr)
        return 2
    if workload == "vllm-prefix-repetition":
        from bench.vllm_client import run_comparison

        return run_comparison(args, argv)
    machine = machine_info()
    command = shlex.join(["cacheroute", "bench", *(sys.argv[1:] if argv is None else argv)])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        trace = build_trace(workload, args)
    except (TraceFormatError, ValueError, OSError) as err:
        print(f"cacheroute bench: {err}", file=sys.stderr)
        return 2
    if not trace:
        print("cacheroute bench: the trace is empty", file=sys.stderr)
        return 2
    save_trace(args.out_dir / "trace.jsonl", trace)

    token_ids = prompt_token_ids(trace)
    oracle = oracle_hits(token_ids, block_size=DEFAULT_ORACLE_BLOCK_SIZE)
    capacity = fleet_capacity_blocks(args.replicas, args.kv_cache_gib,
                                     model_config=default_model_config())
    bounded = capacity_oracle_hits(token_ids, capacity_blocks=capacity,
                                   block_size=DEFAULT_ORACLE_BLOCK_SIZE)
    print(f"machine: {describe(machine)}\ntrace ({workload}): {len(trace)} requests, "
          f"{oracle.prompt_tokens:,} prompt tokens, longest {max(map(len, token_ids)):,}; "
          f"oracle hit rate {oracle.hit_rate:.1%}, capacity-bound ({capacity:,} blocks) "
          f"{bounded.hit_rate:.1%}", file=sys.stderr)
    if args.dry_run:
        print(f"dry run: trace in {args.out_dir / 'trace.jsonl'}; no service started",
              file=sys.stderr)
        return 0

    summaries: list[PolicySummary] = []
    ttfts: dict[str, list[float]] = {}
    load: dict[str, list[tuple[float, dict[str, float]]]] = {}
    extra: dict[str, dict[str, Any]] = {}
    settings = settings_from(args)
    for policy in args.policies:
        from tqdm import tqdm

        def drive(base_url: str, policy: str = policy) -> list[Any]:
            with tqdm(total=len(trace), unit="req", desc=policy, file=sys.stderr) as bar:
                return asyncio.run(replay(
                    trace, base_url=base_url, model=MODEL_ID, policy=policy,
                    concurrency=args.concurrency, on_done=lambda _: bar.update(1)))

        try:
            run = (run_peer_measured if is_peer(policy) else run_measured)(
                policy, settings, args.out_dir / policy, drive)
        except ServiceError as err:
            print(f"cacheroute bench: {err}", file=sys.stderr)
            return 1
        results = run.outcome
        with (args.out_dir / policy / "requests.jsonl").open("w", encoding="utf-8") as out:
            for r in results:
                out.write(json.dumps(asdict(r)) + "\n")
        summaries.append(summarise(policy, results, oracle_hit_rate=oracle.hit_rate,
                                   capacity_oracle_hit_rate=bounded.hit_rate,
                                   **run.service_fields()))
        ttfts[policy] = [r.ttft_s for r in results if r.error is None and r.ttft_s is not None]
        load[policy] = [(s.t_s, dict(s.in_flight)) for s in run.load]
        extra[policy] = {
            "prompt_tokens_mismatch": sum(1 for r in results if r.prompt_tokens is not None
                                          and r.prompt_tokens != len(token_ids[r.index])),
            "stragglers_killed": run.stragglers_killed,
            "requests_by_replica": run.counters.requests_by_replica,
            "decisions": run.counters.decisions,
            "replications": run.counters.replications,
            "spill_waits": run.counters.spill_waits,
            **run.peer_fields(),
        }

    description = workload_description(workload, args, len(trace))
    write_outputs(args, machine, command, description, summaries, ttfts, load, extra,
                  capacity_blocks=capacity)
    return 0



if __name__ == "__main__":
    sys.exit(main())
