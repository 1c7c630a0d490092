"""Operator sweeps: hit rate and TTFT against fleet size, ε, load floor, KV and tenant skew.

    cacheroute sim sweep --out-dir docs/img --json out/sim-sweep.json

One base scenario (the options of ``cacheroute sim``, with the defaults below:
16 replicas of the engine fitted to the live CPU run, 64 tenants, Zipf 1.1,
8 requests/s, 8,000 requests), then one variable at a time:

* ``replicas``: fleet size at a fixed demand, the question before buying GPUs;
* ``epsilon``: cacheroute's bounded-load slack (the other policies do not have
  it; they are drawn as flat references at the base point);
* ``floor``: cacheroute's load floor, the requests in flight a replica always
  has room for (likewise cacheroute's alone);
* ``kv``: KV cache per replica, in GiB of the model's geometry;
* ``zipf``: how skewed tenant popularity is;
* ``ingresses``: ingress instances, each with its own router (``routers/ingresses.py``),
  with ``ray-prefix-local`` (a tree per ingress) beside the others; ``ray-prefix``'s
  routers share one tree, so it is drawn flat at the base point.

Each sweep writes ``sim-<name>.png`` (hit rate; TTFT p50 and p99 on a log
scale; one colour per policy) to ``--out-dir``, and every point goes to
``--json`` and to a Markdown table on stdout. Cost: about 36 runs of 8,000
requests per policy, about a minute of one core (38 s on the 2-core VM of docs/
without the floor sweep).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sim.comparison import RequestSource, add_arguments, run_policies
from bench.sim.routers import POLICIES
from bench.sim.summary import SimSummary, summary_json

# The base scenario: a fleet sized so that cache-aware routing keeps it out of
# overload at the base point while cache-blind routing does not
# (docs/benchmarks/simulator.md).
BASE = {"replicas": 16, "tenants": 64, "zipf": 1.1, "rate": 8.0, "requests": 8000,
        "policies": ["cacheroute", "pow2", "ray-prefix"], "no_progress": True}


@dataclass(frozen=True)
class Sweep:
    name: str
    x_label: str
    values: tuple[float, ...]
    # Sets the swept value on a copy of the base options.
    apply: Callable[[argparse.Namespace, float], None]
    # Policies whose result changes with the value; the others are run once.
    varying: tuple[str, ...] | None = None
    log_x: bool = False
    # Policies run in this sweep only, after the base ones.
    also: tuple[str, ...] = ()
    # Legend note for a policy run once (``varying``).
    fixed_note: str = "no ε; base point"


def _set(name: str, cast: Callable[[float], Any] = float) -> Callable[[argparse.Namespace,
                                                                        float], None]:
    def apply(args: argparse.Namespace, value: float) -> None:
        setattr(args, name, cast(value))
    return apply


def _set_kv(args: argparse.Namespace, value: float) -> None:
    args.kv_gib, args.kv_blocks = value, None


SWEEPS = (
    Sweep("replicas", "replicas (fixed demand: 8 requests/s)", (4, 8, 12, 16, 24, 32),
          _set("replicas", int)),
    Sweep("epsilon", "cacheroute load_epsilon ε", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
          _set("load_epsilon"), varying=("cacheroute",)),
    Sweep("floor", "cacheroute load_floor (requests a replica always has room for)",
          (0, 1, 2, 3, 4, 6), _set("load_floor", int), varying=("cacheroute",),
          fixed_note="no floor; base point"),
    Sweep("kv", "KV cache per replica (GiB; 1 GiB = 364 blocks of 128 tokens)",
          (0.125, 0.25, 0.5, 1.0, 2.0, 4.0), _set_kv, log_x=True),
    Sweep("zipf", "tenant popularity Zipf exponent s", (0.0, 0.5, 0.8, 1.1, 1.4, 1.8),
          _set("zipf")),
    Sweep("ingresses", "ingress instances, each with its own router", (1, 2, 4, 8, 16),
          _set("ingresses", int), varying=("cacheroute", "pow2", "random", "ray-prefix-local"),
          log_x=True, also=("ray-prefix-local",),
          fixed_note="one tree shared by every ingress"),
)


def run_sweep(sweep: Sweep, base: argparse.Namespace) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    policies = [*base.policies, *(p for p in sweep.also if p not in base.policies)]
    base = argparse.Namespace(**{**vars(base), "policies": policies})
    fixed = [p for p in base.policies if sweep.varying is not None and p not in sweep.varying]
    if fixed:  # policies the value does not affect: one run at the base point
        args = argparse.Namespace(**{**vars(base), "policies": fixed})
        for summary, _ in run_policies(args, RequestSource(args), progress=False):
            points += [_point(sweep, value, summary, fixed=True) for value in sweep.values]
    for value in sweep.values:
        args = argparse.Namespace(**vars(base))
        sweep.apply(args, value)
        args.policies = [p for p in base.policies if p not in fixed]
        print(f"  {sweep.name} = {value:g}", file=sys.stderr, flush=True)
        for summary, _ in run_policies(args, RequestSource(args), progress=False):
            points.append(_point(sweep, value, summary))
    return points


def _point(sweep: Sweep, value: float, summary: SimSummary, *,
           fixed: bool = False) -> dict[str, Any]:
    return {"sweep": sweep.name, "value": value, "fixed": fixed, **summary_json(summary)}


def write_chart(path: Path, sweep: Sweep, points: Sequence[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, (hits, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    policies = [p for p in POLICIES if any(point["policy"] == p for point in points)]
    for policy in policies:
        mine = sorted((p for p in points if p["policy"] == policy), key=lambda p: p["value"])
        xs = [p["value"] for p in mine]
        color = f"C{POLICIES.index(policy)}"  # one colour per policy in every chart
        style = ":" if mine and mine[0]["fixed"] else "-"
        label = policy + (f" ({sweep.fixed_note})" if mine and mine[0]["fixed"] else "")
        hits.plot(xs, [p["hit_rate"] * 100 for p in mine], style, marker="o", color=color,
                  label=label)
        ttft.plot(xs, [p["ttft_p50_s"] for p in mine], style, marker="o", color=color,
                  label=f"{policy} p50")
        ttft.plot(xs, [p["ttft_p99_s"] for p in mine], "--", marker="x", color=color,
                  label=f"{policy} p99")
    if points:
        oracle = max(p["oracle_hit_rate"] for p in points) * 100
        hits.axhline(oracle, color="grey", linestyle="--", linewidth=1,
                     label=f"oracle (max) {oracle:.1f}%")
    for axis in (hits, ttft):
        axis.set_xlabel(sweep.x_label)
        axis.grid(True, which="both", alpha=0.3)
        if sweep.log_x:
            axis.set_xscale("log", base=2)
            axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    hits.set_ylabel("prompt tokens served from cache (%)")
    hits.set_ylim(0, 100)
    hits.legend(loc="lower right", fontsize=8)
    hits.set_title("Prefix-cache hit rate")
    ttft.set_yscale("log")
    ttft.set_ylabel("TTFT (s, log scale)")
    ttft.legend(loc="upper right", fontsize=7, ncol=2)
    ttft.set_title("TTFT p50 (solid) and p99 (dashed)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(points: Sequence[dict[str, Any]]) -> str:
    out = ["| sweep | value | policy | hit rate | oracle | TTFT p50 s | TTFT p99 s | load skew |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    shown_fixed: set[tuple[str, str]] = set()
    for p in points:
        value = f"{p['value']:g}"
        if p["fixed"]:  # a flat reference, the same at every value: once per sweep
            if (p["sweep"], p["policy"]) in shown_fixed:
                continue
            shown_fixed.add((p["sweep"], p["policy"]))
            value = "any"
        out.append(f"| {p['sweep']} | {value} | {p['policy']} | {p['hit_rate']:.1%} | "
                   f"{p['oracle_hit_rate']:.1%} | {p['ttft_p50_s']:.2f} | "
                   f"{p['ttft_p99_s']:.2f} | {p['load_skew']:.2f} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cacheroute sim sweep",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(**BASE)
    p.add_argument("--sweeps", default=",".join(s.name for s in SWEEPS),
                   help="comma-separated subset of " + ",".join(s.name for s in SWEEPS))
    p.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = [s for s in SWEEPS if s.name in args.sweeps.split(",")]
    if not wanted:
        print("cacheroute sim sweep: no known sweep selected", file=sys.stderr)
        return 2
    title = (f"{args.tenants} tenants, Zipf {args.zipf:g}, {args.rate:g} req/s, "
             f"{args.requests:,} requests, {args.replicas} replicas at the base point; "
             f"engine fitted to the live CPU run")
    all_points = []
    for sweep in wanted:
        print(f"sweep {sweep.name}", file=sys.stderr, flush=True)
        points = run_sweep(sweep, args)
        all_points += points
        write_chart(args.out_dir / f"sim-{sweep.name}.png", sweep, points, title)
    print(markdown(all_points))
    if args.json is not None:
        from bench.machine import machine_info

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": machine_info(),
            "command": shlex.join(["cacheroute", "sim", "sweep", *argv]),
            "base": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))},
            "points": all_points,
        }, indent=2, default=str) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
