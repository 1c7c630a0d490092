"""Per-policy summaries of simulated runs: the numbers, the JSON and a Markdown table.

The same definitions as the live benchmark (``bench/report.py``), so a simulated
row compares with a live one: ``hit_rate`` = cached / prompt tokens, the oracle
is an infinite cache shared by every replica (``bench/oracle.py``), TTFT is
arrival to first token, ``load_skew`` is max / mean requests served per replica.
Added: ``decisions_per_s``, routing decisions per second of the time spent in
the router's ``route`` call alone (one core), and the outcome counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.sim.loop import RunResult
from bench.stats import percentile


@dataclass(frozen=True, kw_only=True)
class SimSummary:
    policy: str
    replicas: int
    requests: int
    hit_rate: float
    oracle_hit_rate: float
    prompt_tokens: int
    cached_tokens: int
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    e2e_p50_s: float
    load_skew: float
    throughput_rps: float
    # Simulated seconds from the first arrival to the last finish.
    sim_duration_s: float
    decisions: int
    decisions_per_s: float
    # Wall-clock seconds of the whole run (request building, engines, router).
    wall_s: float
    held_requests: int
    outcomes: dict[str, int] = field(default_factory=dict)


def summarise(run: RunResult) -> SimSummary:
    ttfts = sorted(run.ttft_s)
    served = run.requests_by_replica
    mean_served = sum(served) / len(served) if served else 0.0
    return SimSummary(
        policy=run.policy,
        replicas=run.replicas,
        requests=run.requests,
        hit_rate=run.cached_tokens / run.prompt_tokens if run.prompt_tokens else 0.0,
        oracle_hit_rate=(run.oracle_cached_tokens / run.prompt_tokens
                         if run.prompt_tokens else 0.0),
        prompt_tokens=run.prompt_tokens,
        cached_tokens=run.cached_tokens,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        ttft_p99_s=percentile(ttfts, 99),
        e2e_p50_s=percentile(run.e2e_s, 50),
        load_skew=max(served) / mean_served if mean_served else math.nan,
        throughput_rps=run.requests / run.duration_s if run.duration_s > 0 else math.nan,
        sim_duration_s=run.duration_s,
        decisions=run.decisions,
        decisions_per_s=run.decisions / run.decision_s if run.decision_s > 0 else math.nan,
        wall_s=run.wall_s,
        held_requests=run.held,
        outcomes=dict(sorted(run.outcomes.items())),
    )


def summary_json(summary: SimSummary) -> dict[str, Any]:
    """The summary with NaN written as null, which JSON can hold."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(summary).items()}


def markdown_table(summaries: list[SimSummary]) -> str:
    def sec(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.3f}"

    out = [("| policy | hit rate | oracle | TTFT p50 s | TTFT p90 s | TTFT p99 s | e2e p50 s "
            "| load skew | decisions/s | wall s |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        out.append(f"| {s.policy} | {s.hit_rate:.1%} | {s.oracle_hit_rate:.1%} | "
                   f"{sec(s.ttft_p50_s)} | {sec(s.ttft_p90_s)} | {sec(s.ttft_p99_s)} | "
                   f"{sec(s.e2e_p50_s)} | {s.load_skew:.2f} | {s.decisions_per_s:,.0f} | "
                   f"{s.wall_s:.1f} |")
    return "\n".join(out)
