"""Per-policy summaries of a live run: numbers, a Markdown table and a PNG chart.

``hit_rate`` is ``sum(cached_tokens) / sum(prompt_tokens)`` over the requests that
finished with usage; ``oracle_hit_rate`` (``oracle.py``) is the same ratio for an
ideal infinite shared cache on the same trace, so ``hit_rate / oracle_hit_rate``
is how much of the reachable reuse a policy got. Latencies are over successful
requests; ``throughput_rps`` is successful requests over the span from the first
send to the last completion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.replay import RequestResult
from bench.stats import percentile


@dataclass(frozen=True, kw_only=True)
class PolicySummary:
    policy: str
    requests: int
    errors: int
    hit_rate: float
    oracle_hit_rate: float
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


def summarise(policy: str, results: Sequence[RequestResult], *, oracle_hit_rate: float,
              startup_s: float | None = None) -> PolicySummary:
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
        throughput_rps=len(ok) / span if span > 0 else 0.0,
        duration_s=span,
        missing_usage=len(ok) - len(with_usage),
        startup_s=startup_s,
    )


def markdown_table(summaries: Sequence[PolicySummary]) -> str:
    def sec(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.3f}"

    out = [("| policy | hit rate | oracle | TTFT p50 s | TTFT p90 s | TTFT p99 s | e2e p50 s "
            "| req/s | errors | requests |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        out.append(f"| {s.policy} | {s.hit_rate:.1%} | {s.oracle_hit_rate:.1%} | "
                   f"{sec(s.ttft_p50_s)} | {sec(s.ttft_p90_s)} | {sec(s.ttft_p99_s)} | "
                   f"{sec(s.e2e_p50_s)} | {s.throughput_rps:.2f} | {s.errors} | {s.requests} |")
    return "\n".join(out)


def write_chart(path: Path, summaries: Sequence[PolicySummary],
                results: Mapping[str, Sequence[RequestResult]], *, title: str) -> None:
    """TTFT CDF per policy (left) and hit rate per policy against the oracle (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(11, 4.2),
                                    gridspec_kw={"width_ratios": [3, 2]})
    for s in summaries:
        ttfts = sorted(r.ttft_s for r in results.get(s.policy, ())
                       if r.error is None and r.ttft_s is not None)
        if ttfts:
            # Starts at (fastest, 0) so the curve shows the first request's step too.
            ys = [0.0] + [(k + 1) / len(ttfts) for k in range(len(ttfts))]
            cdf.step([ttfts[0], *ttfts], ys, where="post", label=s.policy)
    cdf.set_xscale("log")
    cdf.set_xlabel("TTFT (s, log scale)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_ylim(0, 1.02)
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(loc="lower right")
    cdf.set_title("TTFT CDF")

    names = [s.policy for s in summaries]
    rates = [s.hit_rate * 100 for s in summaries]
    drawn = bars.bar(names, rates, color="tab:blue")
    bars.bar_label(drawn, labels=[f"{r:.1f}%" for r in rates])
    if summaries:
        oracle = summaries[0].oracle_hit_rate * 100
        bars.axhline(oracle, color="tab:red", linestyle="--", label=f"oracle {oracle:.1f}%")
        bars.legend(loc="upper right")
    bars.set_ylim(0, 100)
    bars.set_ylabel("prompt tokens served from cache (%)")
    bars.set_title("Prefix-cache hit rate")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_json(s: PolicySummary) -> dict[str, Any]:
    """The summary with NaN (no samples) written as null, which JSON can hold."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(s).items()}
