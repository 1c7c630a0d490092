"""Per-policy summaries of a live run: numbers, a Markdown table, PNG charts, and the
run's ``live.json`` (``write_outputs``, for both runners: bench/live.py, bench/vllm_client.py).

Hit rates, all ``cached / prompt`` tokens:

* ``hit_rate``: from the responses, ``sum(usage.prompt_tokens_details.cached_tokens)
  / sum(usage.prompt_tokens)`` over the requests that finished with usage; for a
  client that does not record usage (vLLM's own benchmark client) it is the
  engine hit rate below, and ``hit_rate_source`` says which;
* ``engine_hit_rate``: the engines' own ``vllm:prefix_cache_hits_total /
  vllm:prefix_cache_queries_total`` over the run, summed over replicas
  (``service_metrics.py``); ``engine_prompt_hit_rate`` the same from
  ``vllm:prompt_tokens_cached_total / vllm:prompt_tokens_total`` where exported;
* ``oracle_hit_rate``: an ideal infinite cache shared by every replica on the same
  trace (``oracle.py``), so ``hit_rate / oracle_hit_rate`` is how much of the
  reachable reuse a policy got; ``capacity_oracle_hit_rate``: the same cache
  bounded by the fleet's total KV blocks (LRU).

Latencies are over successful requests; ``throughput_rps`` and
``output_tokens_per_s`` are over the span from the first send to the last
completion. ``load_skew`` is max / mean over replicas of the time-averaged
in-flight count (1 s samples); ``request_skew`` the same of requests served;
``spills`` cacheroute's bounded-load spills (None for policies without them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bench.machine import describe
from bench.oracle import DEFAULT_ORACLE_BLOCK_SIZE
from bench.policy_run import settings_from
from bench.replay import RequestResult
from bench.results import write_result
from bench.stats import percentile


@dataclass(frozen=True, kw_only=True)
class PolicySummary:
    policy: str
    requests: int
    errors: int
    hit_rate: float
    oracle_hit_rate: float | None
    prompt_tokens: int
    cached_tokens: int
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    e2e_p50_s: float
    throughput_rps: float
    duration_s: float
    # Successful requests whose stream carried no usage (hit rate cannot count them).
    missing_usage: int
    startup_s: float | None = None
    e2e_p90_s: float = math.nan
    e2e_p99_s: float = math.nan
    output_tokens_per_s: float = 0.0
    hit_rate_source: str = "cached_tokens"
    engine_hit_rate: float | None = None
    engine_prompt_hit_rate: float | None = None
    capacity_oracle_hit_rate: float | None = None
    load_skew: float | None = None
    request_skew: float | None = None
    spills: int | None = None


def summarise(policy: str, results: Sequence[RequestResult], *,
              oracle_hit_rate: float | None, startup_s: float | None = None,
              **service: Any) -> PolicySummary:
    """The requests' numbers; ``service`` adds the fields measured on the service
    (``engine_hit_rate``, ``load_skew``, ...)."""
    ok = [r for r in results if r.error is None]
    with_usage = [r for r in ok if r.prompt_tokens is not None]
    prompt = sum(r.prompt_tokens or 0 for r in with_usage)
    cached = sum(r.cached_tokens or 0 for r in with_usage)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2es = [r.e2e_s for r in ok if r.e2e_s is not None]
    span = (max(r.done_s for r in results) - min(r.sent_s for r in results)) if results else 0.0
    return PolicySummary(
        policy=policy,
        requests=len(results),
        errors=len(results) - len(ok),
        hit_rate=cached / prompt if prompt else 0.0,
        oracle_hit_rate=oracle_hit_rate,
        prompt_tokens=prompt,
        cached_tokens=cached,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        ttft_p99_s=percentile(ttfts, 99),
        e2e_p50_s=percentile(e2es, 50),
        e2e_p90_s=percentile(e2es, 90),
        e2e_p99_s=percentile(e2es, 99),
        throughput_rps=len(ok) / span if span > 0 else 0.0,
        output_tokens_per_s=(sum(r.completion_tokens or 0 for r in ok) / span
                             if span > 0 else 0.0),
        duration_s=span,
        missing_usage=len(ok) - len(with_usage),
        startup_s=startup_s,
        **service,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _sec(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(summaries: Sequence[PolicySummary]) -> str:
    out = [("| policy | hit rate | engine hit rate | oracle | capacity oracle | TTFT p50 s "
            "| TTFT p90 s | TTFT p99 s | e2e p50 s | e2e p99 s | req/s | out tok/s "
            "| load skew | spills | errors | requests |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        out.append(f"| {s.policy} | {s.hit_rate:.1%} | {_pct(s.engine_hit_rate)} | "
                   f"{_pct(s.oracle_hit_rate)} | {_pct(s.capacity_oracle_hit_rate)} | "
                   f"{_sec(s.ttft_p50_s)} | {_sec(s.ttft_p90_s)} | {_sec(s.ttft_p99_s)} | "
                   f"{_sec(s.e2e_p50_s)} | {_sec(s.e2e_p99_s)} | {s.throughput_rps:.2f} | "
                   f"{s.output_tokens_per_s:.1f} | {_num(s.load_skew)} | "
                   f"{_num(s.spills, '{}')} | {s.errors} | {s.requests} |")
    return "\n".join(out)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def write_chart(path: Path, summaries: Sequence[PolicySummary],
                ttfts: Mapping[str, Sequence[float]], *, title: str) -> None:
    """TTFT CDF per policy (left) and hit rates per policy against the oracles (right)."""
    plt = _pyplot()
    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(12, 4.4),
                                    gridspec_kw={"width_ratios": [3, 2]})
    for s in summaries:
        values = sorted(ttfts.get(s.policy, ()))
        if values:
            # Starts at (fastest, 0) so the curve shows the first request's step too.
            ys = [0.0] + [(k + 1) / len(values) for k in range(len(values))]
            cdf.step([values[0], *values], ys, where="post", label=s.policy)
    cdf.set_xscale("log")
    cdf.set_xlabel("TTFT (s, log scale)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_ylim(0, 1.02)
    cdf.grid(True, which="both", alpha=0.3)
    if summaries:
        cdf.legend(loc="lower right")
    cdf.set_title("TTFT CDF")

    names = [s.policy for s in summaries]
    width = 0.4
    xs = range(len(names))
    client = [s.hit_rate * 100 for s in summaries]
    engine = [(s.engine_hit_rate or 0.0) * 100 for s in summaries]
    drawn = bars.bar([x - width / 2 for x in xs], client, width, label="responses",
                     color="tab:blue")
    bars.bar_label(drawn, labels=[f"{r:.0f}" for r in client], fontsize=8)
    drawn = bars.bar([x + width / 2 for x in xs], engine, width, label="engine counters",
                     color="tab:cyan")
    bars.bar_label(drawn, labels=[f"{r:.0f}" for r in engine], fontsize=8)
    bars.set_xticks(list(xs), names)
    if summaries:
        first = summaries[0]
        for value, style, label in ((first.oracle_hit_rate, "--", "oracle"),
                                    (first.capacity_oracle_hit_rate, ":", "capacity oracle")):
            if value is not None:
                bars.axhline(value * 100, color="tab:red", linestyle=style,
                             label=f"{label} {value:.1%}")
        bars.legend(loc="lower right", fontsize=8)
    bars.set_ylim(0, 100)
    bars.set_ylabel("prompt tokens served from cache (%)")
    bars.set_title("Prefix-cache hit rate")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_load_chart(path: Path, load: Mapping[str, Sequence[tuple[float, Mapping[str, float]]]],
                     *, title: str) -> None:
    """Per-replica in-flight requests over time, one panel per policy; ``load`` maps a
    policy to ``(seconds, {replica: in_flight})`` samples."""
    plt = _pyplot()
    policies = list(load) or ["(none)"]
    fig, axes = plt.subplots(len(policies), 1, figsize=(10, 2.2 * len(policies) + 0.6),
                             sharex=True, squeeze=False)
    for ax, policy in zip(axes[:, 0], policies):
        samples = load.get(policy, ())
        replicas = sorted({r for _, values in samples for r in values})
        for k, replica in enumerate(replicas):
            ax.plot([t for t, _ in samples], [values.get(replica, 0.0) for _, values in samples],
                    label=f"replica {k} ({replica[:8]})", linewidth=1)
        ax.set_ylabel("in flight")
        ax.set_title(policy, fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
        if replicas:
            ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the replay started")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_json(s: PolicySummary) -> dict[str, Any]:
    """The summary with NaN (no samples) written as null, which JSON can hold."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(s).items()}


def summary_from_json(data: Mapping[str, Any]) -> PolicySummary:
    """``summary_json``'s inverse: null back to NaN where the field is a plain float.
    Keys that are not summary fields (the service's extra columns of a ``live.json``
    row) are left out."""
    kinds = {f.name: f.type for f in fields(PolicySummary)}
    return PolicySummary(**{k: (math.nan if v is None and kinds[k] == "float" else v)
                            for k, v in data.items() if k in kinds})


def workload_description(workload: str, args: argparse.Namespace, requests: int) -> dict[str, Any]:
    """The workload's own parameters, for the JSON and the chart titles."""
    own: dict[str, Any] = {
        "tenants": {"tenants": args.tenants, "per_tenant": args.per_tenant,
                    "zipf_s": (None if args.per_tenant is not None
                               else 1.1 if args.zipf is None else args.zipf)},
        "sessions": {"sessions": args.sessions, "turns": args.turns, "think_s": args.think_s},
        "documents": {"documents": args.documents, "document_words": args.document_words,
                      "zipf_s": 0.8 if args.zipf is None else args.zipf},
        "trace": {"trace": str(args.trace)},
        "vllm-prefix-repetition": {"prefix_len": args.prefix_len, "suffix_len": args.suffix_len,
                                   "num_prefixes": args.num_prefixes},
    }[workload]
    return {"workload": workload, "requests": requests, **own, "seed": args.seed,
            "max_tokens": args.max_tokens, "rate_rps": args.rate,
            "concurrency": args.concurrency, "replicas": args.replicas,
            "kv_cache_gib": args.kv_cache_gib, "oracle_block_size": DEFAULT_ORACLE_BLOCK_SIZE}


def title_of(description: dict[str, Any], machine: dict[str, Any]) -> str:
    load = (f"Poisson {description['rate_rps']} req/s" if description["rate_rps"] is not None
            else f"concurrency {description['concurrency']}")
    return (f"{description['workload']}: {description['requests']} requests, {load}, "
            f"{description['replicas']} replicas -- {describe(machine)}")


def write_outputs(args: argparse.Namespace, machine: dict[str, Any], command: str,
                  description: dict[str, Any], summaries: Sequence[PolicySummary],
                  ttfts: dict[str, list[float]],
                  load: dict[str, list[tuple[float, dict[str, float]]]],
                  extra: dict[str, dict[str, Any]], *, capacity_blocks: int | None) -> None:
    """``live.json``, the table on stdout, and the two charts (when matplotlib is there)."""
    title = title_of(description, machine)
    json_path = args.json or args.out_dir / "live.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    workload = {**description, "capacity_oracle_blocks": capacity_blocks}
    rows = [{**summary_json(s), **extra.get(s.policy, {})} for s in summaries]
    json_path.write_text(json.dumps({
        "machine": machine,
        "command": command,
        "workload": workload,
        "results": rows,
    }, indent=2) + "\n")
    print(f"Machine: {describe(machine)}\nWorkload: {title.split(' -- ')[0]}\n")
    print(markdown_table(summaries))
    charts = [args.out_dir / "live.png", args.out_dir / "replica_load.png"]
    try:
        write_chart(charts[0], summaries, ttfts, title=title)
        write_load_chart(charts[1], load, title=f"in-flight requests per replica -- {title}")
    except ImportError:  # matplotlib is optional; the numbers are already written
        print("cacheroute bench: no charts (pip install matplotlib)", file=sys.stderr)
        charts = []
    print(f"\nwrote {json_path}{''.join(', ' + str(c) for c in charts)}; per-request data "
          f"in {args.out_dir}/<policy>/", file=sys.stderr)
    # The run's result file (bench/results.py, docs/benchmarks/README.md).
    write_result("live", str(description["workload"]), command=command, machine=machine,
                 parameters={"workload": workload, "service": asdict(settings_from(args))},
                 results=rows, chart=charts[0] if charts else None)
