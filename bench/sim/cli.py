"""`cacheroute sim`: simulated policy comparison on modelled engines.

    cacheroute sim --replicas 2 --tenants 8 --requests 120 --rate 1 --zipf 1.1 \\
        --json out/sim.json
    cacheroute sim --replicas 1000 --trace trace.jsonl --json out/sim.json

Each policy in ``--policies`` runs the same requests (a ``--trace`` file in the
live benchmark's format, or the built-in workload of ``bench/workloads.py``
with the same flags and seeds as ``cacheroute bench``) on a fresh fleet of
modelled engines (``engine.py``). The Markdown table goes to stdout, progress
to stderr, and with ``--json PATH`` the summary to PATH:
``{"results": [{"policy": ..., "hit_rate": ..., "decisions_per_s": ..., ...}]}``.

``cacheroute sim sweep ...`` and ``cacheroute sim calibrate ...`` run the
operator sweeps (``sweep.py``) and the fit to a live run (``calibrate.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.cli_args import policy_list
from bench.sim.engine import SMOLLM2_135M_GEOMETRY, EngineParams, kv_capacity_blocks
from bench.sim.loop import FleetParams, RunResult, simulate
from bench.sim.prompts import PromptHasher, SimRequest, sim_requests
from bench.sim.routers import DEFAULT_POLICIES, POLICIES
from bench.sim.summary import SimSummary, markdown_table, summarise, summary_json
from bench.sim.tokens import EngineTokenizer, PromptTokens, SyntheticTokenizer
from bench.trace import TraceFormatError, TraceRequest, load_trace
from bench.workloads import WorkloadSpec, iter_requests, make_tenants
from router import PolicyConfig

# routing.spill_wait_s's default (serving/config.py; a unit test keeps them equal).
SPILL_WAIT_S = 0.0

_DEFAULT_ENGINE = EngineParams()


_policies = policy_list(POLICIES)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The run's options; ``sweep.py`` and ``calibrate.py`` reuse them."""
    p.add_argument("--policies", type=_policies, default=list(DEFAULT_POLICIES),
                   help=f"comma-separated, run in this order (default "
                        f"{','.join(DEFAULT_POLICIES)}; also: "
                        f"{','.join(p for p in POLICIES if p not in DEFAULT_POLICIES)})")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--ingresses", type=int, default=1,
                   help="ingress instances, each with its own router (default 1; "
                        "ray-prefix's share one tree, ray-prefix-local's do not)")
    work = p.add_argument_group("workload (ignored with --trace)")
    work.add_argument("--trace", type=Path, help="a JSONL trace (bench/trace.py format)")
    work.add_argument("--tenants", type=int, default=8)
    work.add_argument("--requests", type=int, default=200)
    work.add_argument("--rate", type=float, default=1.0, help="Poisson arrivals, requests/s")
    work.add_argument("--zipf", type=float, default=1.1, help="tenant popularity exponent s")
    work.add_argument("--seed", type=int, default=0)
    work.add_argument("--max-tokens", type=int, default=8)
    work.add_argument("--system-prompt-words", type=int, default=850)
    work.add_argument("--tokenizer", choices=("synthetic", "engine"), default="synthetic",
                      help="synthetic ids (fast) or the default model's tokenizer (exact)")
    eng = p.add_argument_group("engines (defaults: the fit to the live CPU run)")
    eng.add_argument("--block-size", type=int, default=_DEFAULT_ENGINE.block_size)
    kv = eng.add_mutually_exclusive_group()
    kv.add_argument("--kv-blocks", type=int, help="KV cache per replica, in blocks")
    kv.add_argument("--kv-gib", type=float,
                    help="KV cache per replica in GiB (blocks from --model-config; default 1)")
    eng.add_argument("--model-config", type=Path,
                     help="config.json giving the KV geometry (default SmolLM2-135M)")
    eng.add_argument("--max-num-seqs", type=int, default=_DEFAULT_ENGINE.max_num_seqs)
    eng.add_argument("--max-num-batched-tokens", type=int,
                     default=_DEFAULT_ENGINE.max_num_batched_tokens)
    eng.add_argument("--prefill-s-per-token", type=float,
                     default=_DEFAULT_ENGINE.prefill_s_per_token)
    eng.add_argument("--decode-s-per-seq", type=float,
                     default=_DEFAULT_ENGINE.decode_s_per_seq)
    eng.add_argument("--step-overhead-s", type=float, default=_DEFAULT_ENGINE.step_overhead_s)
    eng.add_argument("--max-ongoing-requests", type=int,
                     help="Serve's per-replica cap (default max(8, 2 x max-num-seqs); 0: none)")
    route = p.add_argument_group("cacheroute policy")
    route.add_argument("--load-epsilon", type=float, default=PolicyConfig().load_epsilon)
    route.add_argument("--load-floor", type=int, default=PolicyConfig().load_floor,
                       help="requests in flight a replica always has room for (routing."
                            f"load_floor; default {PolicyConfig().load_floor}; 0: the bound alone)")
    route.add_argument("--no-kv-events", action="store_true",
                       help="ownership from routing decisions only (no engine KV events)")
    route.add_argument("--spill-wait-s", type=float, default=SPILL_WAIT_S,
                       help="longest wait for an owner's completion before a spill "
                            f"(routing.spill_wait_s; default {SPILL_WAIT_S:g}; 0: spill at once)")
    p.add_argument("--ray-imbalanced-threshold", type=float, default=math.inf,
                   help="ray-prefix's imbalanced_threshold (Ray's default: inf, never)")
    p.add_argument("--json", type=Path, help="write the summary JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cacheroute sim", description=__doc__.split("\n\n")[0],
                                epilog="Subcommands: `cacheroute sim sweep --help`, "
                                       "`cacheroute sim calibrate --help`.")
    add_arguments(p)
    return p


def engine_params(args: argparse.Namespace) -> EngineParams:
    if args.kv_blocks is not None:
        blocks = args.kv_blocks
    else:
        gib = 1.0 if args.kv_gib is None else args.kv_gib
        geometry = args.model_config or SMOLLM2_135M_GEOMETRY
        blocks = kv_capacity_blocks(int(gib * 2**30), geometry, block_size=args.block_size)
    return EngineParams(block_size=args.block_size, kv_capacity_blocks=blocks,
                        max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_num_batched_tokens,
                        prefill_s_per_token=args.prefill_s_per_token,
                        decode_s_per_seq=args.decode_s_per_seq,
                        step_overhead_s=args.step_overhead_s)


def fleet_params(args: argparse.Namespace) -> FleetParams:
    engine = engine_params(args)
    cap = args.max_ongoing_requests
    if cap is None:
        cap = max(8, 2 * engine.max_num_seqs)  # as serving/app.py deploys it
    return FleetParams(replicas=args.replicas, engine=engine,
                       max_ongoing_requests=cap or None)


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec(tenants=args.tenants, requests=args.requests, zipf_s=args.zipf,
                        seed=args.seed, rate_rps=args.rate, max_tokens=args.max_tokens,
                        system_prompt_words=args.system_prompt_words)


class RequestSource:
    """Rebuilds the same ``SimRequest`` stream for each policy (nothing is kept)."""

    def __init__(self, args: argparse.Namespace, *, tokenizer: PromptTokens | None = None) -> None:
        self._trace: list[TraceRequest] | None = None
        if args.trace is not None:
            self._trace = load_trace(args.trace)
            self.count = len(self._trace)
        else:
            self._spec = workload_spec(args)
            self._tenants = make_tenants(self._spec)  # once for every policy
            self.count = self._spec.requests
        self._tokenizer = tokenizer or (EngineTokenizer() if args.tokenizer == "engine"
                                        else SyntheticTokenizer())
        self._block_size = args.block_size

    def trace(self) -> Iterable[TraceRequest]:
        if self._trace is not None:
            return self._trace
        return iter_requests(self._spec, self._tenants)

    def requests(self, *, with_text: bool) -> Iterator[SimRequest]:
        return sim_requests(self.trace(), self._tokenizer, PromptHasher(self._block_size),
                            with_text=with_text)


def run_policies(args: argparse.Namespace, source: RequestSource, *,
                 progress: bool = True) -> list[tuple[SimSummary, RunResult]]:
    fleet = fleet_params(args)
    config = PolicyConfig(block_size=fleet.engine.block_size, load_epsilon=args.load_epsilon,
                          load_floor=args.load_floor)
    out = []
    for policy in args.policies:
        bar = _ProgressBar(policy, source.count) if progress else None
        try:
            run = simulate(policy, source.requests(with_text=policy.startswith("ray-prefix")),
                           fleet,
                           policy_config=config, seed=args.seed,
                           kv_events=not args.no_kv_events,
                           progress=bar.advance if bar is not None else None,
                           ray_imbalanced_threshold=args.ray_imbalanced_threshold,
                           spill_wait_s=args.spill_wait_s, ingresses=args.ingresses)
        finally:
            if bar is not None:
                bar.close()
        out.append((summarise(run), run))
    return out


class _ProgressBar:
    """A tqdm bar on stderr fed with the loop's running request count."""

    def __init__(self, policy: str, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="req", desc=policy, file=sys.stderr,
                         mininterval=0.5)
        self._done = 0

    def advance(self, count: int) -> None:
        self._bar.update(count - self._done)
        self._done = count

    def close(self) -> None:
        self._bar.close()


def report_json(args: argparse.Namespace, summaries: Sequence[SimSummary],
                argv: Sequence[str]) -> dict[str, Any]:
    from bench.machine import machine_info

    fleet = fleet_params(args)
    return {
        "machine": machine_info(),
        "command": shlex.join(["cacheroute", "sim", *argv]),
        "workload": ({"trace": str(args.trace)} if args.trace is not None
                     else {**asdict(workload_spec(args)), "tokenizer": args.tokenizer}),
        "fleet": {"replicas": fleet.replicas, "ingresses": args.ingresses,
                  "max_ongoing_requests": fleet.max_ongoing_requests,
                  "engine": asdict(fleet.engine), "load_epsilon": args.load_epsilon,
                  "load_floor": args.load_floor,
                  "kv_events": not args.no_kv_events,
                  "ray_imbalanced_threshold": (None if math.isinf(args.ray_imbalanced_threshold)
                                               else args.ray_imbalanced_threshold)},
        "results": [summary_json(s) for s in summaries],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from bench.sim.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["calibrate"]:
        from bench.sim.calibrate import main as calibrate_main

        return calibrate_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        source = RequestSource(args)
        summaries = [s for s, _ in run_policies(args, source, progress=not args.no_progress)]
    except (TraceFormatError, ValueError, OSError) as err:
        print(f"cacheroute sim: {err}", file=sys.stderr)
        return 2
    print(markdown_table(summaries))
    report = report_json(args, summaries, argv)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    from bench.results import write_result  # the run's result file (bench/results.py)

    write_result("sim", "tenants" if args.trace is None else f"trace-{args.trace.stem}",
                 command=report["command"], machine=report["machine"],
                 parameters={"workload": report["workload"], "fleet": report["fleet"]},
                 results=report["results"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
