"""Fit the engine model to a live run, then compare simulated and live runs.

    cacheroute sim calibrate --fit out/bench-live-8t \\
        --check out/bench-live-48t --check out/bench-live-48t-eps1 \\
        --json out/sim-calibration.json

Inputs are ``cacheroute bench`` output folders: the exact ``trace.jsonl``, each
policy's ``config.yaml`` (replicas, ``max_num_seqs``, KV GiB, ``load_epsilon``)
and ``requests.jsonl`` (TTFT, end-to-end latency, cached tokens per request).
Prompts are tokenised with the engine's own tokenizer (``tokens.EngineTokenizer``),
so the simulated prompts have exactly the live token counts and block hashes.

What is fitted, and how:

* KV capacity is not fitted but computed from the model's geometry and the live
  ``kv_cache_gib`` (``engine.kv_capacity_blocks``).
* ``prefill_s_per_token``, ``step_overhead_s`` and ``decode_s_per_seq``: a grid
  search minimising, over the fit run's policies, the squared log-ratio of
  simulated to live TTFT p50, p90, p99 and end-to-end p50. Hit rates are *not*
  in the objective, so the comparison below is a test of the model, not of the fit.

Then every run (fit and checks) is simulated with the fitted engine and its own
fleet settings; the table puts simulated and live hit rate, TTFT and load skew
side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from bench.sim.engine import EngineParams, kv_capacity_blocks
from bench.sim.loop import FleetParams, simulate
from bench.sim.prompts import PromptHasher, SimRequest, sim_requests
from bench.sim.summary import SimSummary, summarise
from bench.sim.tokens import EngineTokenizer, PromptTokens
from bench.stats import percentile
from bench.trace import load_trace
from router import PolicyConfig

_GRID_PREFILL_S_PER_TOKEN = tuple(x / 10_000 for x in range(15, 81, 5))  # 1.5 .. 8 ms
_GRID_STEP_OVERHEAD_S = (0.01, 0.02, 0.04, 0.06, 0.08, 0.12)
_GRID_DECODE_S_PER_SEQ = (0.0, 0.005, 0.01, 0.02)


@dataclass(frozen=True, kw_only=True)
class LivePolicy:
    policy: str
    replicas: int
    max_num_seqs: int
    kv_cache_gib: float
    load_epsilon: float
    load_floor: int
    # The spill wait the run's service had; runs from before it existed write none
    # (and spilled at once), later ones always write it (bench/service.py).
    spill_wait_s: float
    hit_rate: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    e2e_p50_s: float
    load_skew: float | None


@dataclass(frozen=True, kw_only=True)
class LiveRun:
    folder: Path
    command: str
    policies: tuple[LivePolicy, ...]


def load_live(folder: Path) -> LiveRun:
    """A ``cacheroute bench`` output folder's settings and per-policy numbers."""
    summary = json.loads((folder / "live.json").read_text())
    policies = []
    for row in summary["results"]:
        name = row["policy"]
        config = yaml.safe_load((folder / name / "config.yaml").read_text())
        requests = [json.loads(line) for line in (folder / name / "requests.jsonl").open()]
        ok = [r for r in requests if r["error"] is None]
        engine = config.get("engine", {})
        routing = config.get("routing", {})
        policies.append(LivePolicy(
            policy=name,
            replicas=int(config.get("replicas", 1)),
            max_num_seqs=int(engine.get("max_num_seqs", 8)),
            kv_cache_gib=float(engine.get("kv_cache_gib", 1)),
            load_epsilon=float(routing.get("load_epsilon", PolicyConfig().load_epsilon)),
            # `cacheroute bench` writes the floor into every run's config; a config
            # without it comes from a version whose default was the bound alone.
            load_floor=int(routing.get("load_floor", 0)),
            spill_wait_s=float(routing.get("spill_wait_s", 0.0)),
            hit_rate=row["hit_rate"],
            ttft_p50_s=percentile([r["ttft_s"] for r in ok], 50),
            ttft_p90_s=percentile([r["ttft_s"] for r in ok], 90),
            ttft_p99_s=percentile([r["ttft_s"] for r in ok], 99),
            e2e_p50_s=percentile([r["e2e_s"] for r in ok], 50),
            load_skew=row.get("load_skew"),
        ))
    return LiveRun(folder=folder, command=summary.get("command", ""), policies=tuple(policies))


def live_requests(folder: Path, tokenizer: PromptTokens, block_size: int) -> list[SimRequest]:
    """The run's exact trace as simulated requests (with Ray's match text)."""
    trace = sorted(load_trace(folder / "trace.jsonl"), key=lambda r: r.t)
    return list(sim_requests(trace, tokenizer, PromptHasher(block_size), with_text=True))


def simulate_live(live: LivePolicy, requests: list[SimRequest], engine: EngineParams, *,
                  seed: int = 0) -> SimSummary:
    """One live policy run, simulated with its own fleet settings and ``engine``."""
    engine = replace(engine, max_num_seqs=live.max_num_seqs,
                     kv_capacity_blocks=kv_capacity_blocks(int(live.kv_cache_gib * 2**30),
                                                           block_size=engine.block_size))
    fleet = FleetParams(replicas=live.replicas, engine=engine,
                        max_ongoing_requests=max(8, 2 * live.max_num_seqs))
    config = PolicyConfig(block_size=engine.block_size, load_epsilon=live.load_epsilon,
                          load_floor=live.load_floor)
    return summarise(simulate(live.policy, requests, fleet, policy_config=config, seed=seed,
                              spill_wait_s=live.spill_wait_s))


def _log_error(sim: float, live: float) -> float:
    if not (sim > 0 and live > 0) or math.isnan(sim) or math.isnan(live):
        return 0.0
    return math.log(sim / live) ** 2


def loss(live: LiveRun, requests: list[SimRequest], engine: EngineParams) -> float:
    total = 0.0
    for policy in live.policies:
        s = simulate_live(policy, requests, engine)
        total += (_log_error(s.ttft_p50_s, policy.ttft_p50_s)
                  + _log_error(s.ttft_p90_s, policy.ttft_p90_s)
                  + _log_error(s.ttft_p99_s, policy.ttft_p99_s)
                  + _log_error(s.e2e_p50_s, policy.e2e_p50_s))
    return total


def fit(live: LiveRun, requests: list[SimRequest], base: EngineParams) -> tuple[EngineParams,
                                                                                 float]:
    """The grid point with the least ``loss`` (ties: the first in grid order)."""
    best: tuple[float, EngineParams] | None = None
    for prefill, overhead, decode in itertools.product(
            _GRID_PREFILL_S_PER_TOKEN, _GRID_STEP_OVERHEAD_S, _GRID_DECODE_S_PER_SEQ):
        engine = replace(base, prefill_s_per_token=prefill, step_overhead_s=overhead,
                         decode_s_per_seq=decode)
        value = loss(live, requests, engine)
        if best is None or value < best[0]:
            best = (value, engine)
    assert best is not None
    return best[1], best[0]


def comparison_rows(runs: Sequence[tuple[LiveRun, list[SimRequest]]],
                    engine: EngineParams) -> list[dict[str, Any]]:
    rows = []
    for live, requests in runs:
        for policy in live.policies:
            s = simulate_live(policy, requests, engine)
            rows.append({
                "run": live.folder.name, "policy": policy.policy,
                "load_epsilon": policy.load_epsilon,
                "live_hit_rate": policy.hit_rate, "sim_hit_rate": s.hit_rate,
                "oracle_hit_rate": s.oracle_hit_rate,
                "hit_rate_diff_points": (s.hit_rate - policy.hit_rate) * 100,
                "live_ttft_p50_s": policy.ttft_p50_s, "sim_ttft_p50_s": s.ttft_p50_s,
                "live_ttft_p90_s": policy.ttft_p90_s, "sim_ttft_p90_s": s.ttft_p90_s,
                "live_load_skew": policy.load_skew, "sim_load_skew": s.load_skew,
            })
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    out = [("| live run | policy | live hit rate | sim hit rate | diff (points) | oracle "
            "| live TTFT p50 / p90 s | sim TTFT p50 / p90 s | live skew | sim skew |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        skew = "-" if r["live_load_skew"] is None else f"{r['live_load_skew']:.2f}"
        name = r["policy"] + (f" (ε = {r['load_epsilon']:g})"
                              if r["policy"] == "cacheroute" else "")
        out.append(
            f"| {r['run']} | {name} | {r['live_hit_rate']:.1%} | {r['sim_hit_rate']:.1%} | "
            f"{r['hit_rate_diff_points']:+.1f} | {r['oracle_hit_rate']:.1%} | "
            f"{r['live_ttft_p50_s']:.2f} / {r['live_ttft_p90_s']:.2f} | "
            f"{r['sim_ttft_p50_s']:.2f} / {r['sim_ttft_p90_s']:.2f} | {skew} | "
            f"{r['sim_load_skew']:.2f} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cacheroute sim calibrate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--fit", type=Path, required=True, help="live run folder to fit on")
    p.add_argument("--check", type=Path, action="append", default=[],
                   help="more live run folders to compare (repeatable)")
    p.add_argument("--block-size", type=int, default=EngineParams().block_size)
    p.add_argument("--json", type=Path, help="write the fit and the comparison here")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        tokenizer = EngineTokenizer()
        runs = [(load_live(folder), live_requests(folder, tokenizer, args.block_size))
                for folder in [args.fit, *args.check]]
    except (OSError, ValueError, KeyError) as err:
        print(f"cacheroute sim calibrate: {err}", file=sys.stderr)
        return 2
    base = EngineParams(block_size=args.block_size)
    points = (len(_GRID_PREFILL_S_PER_TOKEN) * len(_GRID_STEP_OVERHEAD_S)
              * len(_GRID_DECODE_S_PER_SEQ))
    print(f"fitting on {args.fit} ({points} grid points)...", file=sys.stderr, flush=True)
    engine, value = fit(runs[0][0], runs[0][1], base)
    rows = comparison_rows(runs, engine)
    fitted = {k: v for k, v in asdict(engine).items()
              if k in ("prefill_s_per_token", "step_overhead_s", "decode_s_per_seq")}
    print("fitted: " + ", ".join(f"{k} = {v:g}" for k, v in fitted.items())
          + f" (loss {value:.3f})\n")
    print(markdown(rows))
    if args.json is not None:
        from bench.machine import machine_info

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": machine_info(),
            "command": shlex.join(["cacheroute", "sim", "calibrate", *argv]),
            "fit_run": str(args.fit), "fitted": fitted, "loss": value,
            "engine": asdict(engine), "rows": rows,
        }, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
