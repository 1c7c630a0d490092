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
operator sweeps (``sweep.py``) and the fit to a live run (``calibrate.py``); the
options and the run they share are in ``comparison.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.sim.comparison import (
    RequestSource,
    add_arguments,
    fleet_params,
    run_policies,
    workload_spec,
)
from bench.sim.summary import SimSummary, markdown_table, summary_json
from bench.trace import TraceFormatError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cacheroute sim", description=__doc__.split("\n\n")[0],
                                epilog="Subcommands: `cacheroute sim sweep --help`, "
                                       "`cacheroute sim calibrate --help`.")
    add_arguments(p)
    return p


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
