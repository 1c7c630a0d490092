"""One chart and one table for policies from several ``cacheroute bench`` runs.

    python -m bench.compare_runs --chart docs/benchmarks/img/live-kvp-4r-floor.png \\
        "pow2=out/bench-kvp-4r/pow2" "floor 4=out/bench-kvp-4r-floor4/cacheroute"

Each argument is ``LABEL=FOLDER/POLICY``: the policy's row of ``FOLDER/live.json``
and its TTFTs from ``FOLDER/POLICY/requests.jsonl``, drawn as ``bench.live`` draws
one run (TTFT CDF, hit rates against the oracles) under ``LABEL``. For runs of the
same trace with different settings, each of which ``cacheroute bench`` starts
afresh: a setting is one invocation, so it is one folder. The runs must share a
trace (the same oracle), or their hit rates do not compare; a mismatch is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.report import PolicySummary, markdown_table, summary_from_json, write_chart


class RunError(ValueError):
    """An argument names no readable run, or the runs do not share a trace."""


@dataclasses.dataclass(frozen=True)
class Labelled:
    summary: PolicySummary
    ttfts: list[float]
    command: str


def parse_spec(spec: str) -> tuple[str, Path, str]:
    """``LABEL=FOLDER/POLICY`` -> (label, folder, policy)."""
    label, sep, where = spec.partition("=")
    path = Path(where)
    if not sep or not label.strip() or not where or path.name in ("", ".", ".."):
        raise RunError(f"expected LABEL=FOLDER/POLICY, got {spec!r}")
    return label.strip(), path.parent, path.name


def load_run(label: str, folder: Path, policy: str) -> Labelled:
    try:
        summary = json.loads((folder / "live.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{folder}: not a cacheroute bench output folder ({err})") from err
    rows = [r for r in summary.get("results", []) if r.get("policy") == policy]
    if not rows:
        raise RunError(f"{folder}/live.json has no {policy!r} row")
    try:
        lines = (folder / policy / "requests.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise RunError(f"{folder}: {policy}'s requests are missing ({err})") from err
    ttfts = [r["ttft_s"] for r in map(json.loads, lines) if r.get("error") is None]
    return Labelled(summary=dataclasses.replace(summary_from_json(rows[0]), policy=label),
                    ttfts=ttfts, command=str(summary.get("command", "")))


def compare(specs: Sequence[str]) -> list[Labelled]:
    runs = [load_run(*parse_spec(spec)) for spec in specs]
    oracles = {round(r.summary.oracle_hit_rate or 0.0, 6) for r in runs}
    if len(oracles) > 1:
        raise RunError("the runs have different oracle hit rates, so different traces: "
                       + ", ".join(f"{r.summary.policy} {r.summary.oracle_hit_rate:.1%}"
                                   for r in runs))
    labels = [r.summary.policy for r in runs]
    if len(set(labels)) != len(labels):
        raise RunError(f"labels must differ, got {labels}")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_runs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=FOLDER/POLICY")
    p.add_argument("--chart", type=Path, help="write the chart (PNG) here")
    p.add_argument("--title", default="", help="the chart's title")
    args = p.parse_args(argv)
    try:
        runs = compare(args.runs)
    except RunError as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 2
    summaries = [r.summary for r in runs]
    print(markdown_table(summaries))
    for r in runs:
        print(f"- {r.summary.policy}: {r.command}")
    if args.chart is not None:
        write_chart(args.chart, summaries, {r.summary.policy: r.ttfts for r in runs},
                    title=args.title)
        print(f"wrote {args.chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
