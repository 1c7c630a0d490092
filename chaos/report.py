"""A drill's numbers from what the client saw and what the samples showed.

Counts are client-side: ``sent`` requests, ``succeeded`` (HTTP 200 and a whole
body), ``failed`` (everything else, ``sent == succeeded + failed``) and, among the
failed, ``broken_streams`` (streams that started and then broke, see
``stream_check``). ``retried`` and ``resumed_streams`` are the service's failover
counters' rise over the drill (0 when it exports none).

Hit rate is cached prompt tokens over prompt tokens (``usage``) of the succeeded
requests *started* in a window:

- ``hit_rate_before``: the ``window_s`` before the fault;
- ``hit_rate_after``: ``after_window_s`` (30 s) from recovery;
- ``hit_rate_recovery_s``: from recovery to the end of the first ``window_s``
  window (stepping by ``step_s``, at least ``MIN_WINDOW_REQUESTS`` requests)
  whose hit rate is at least ``HIT_RATE_GOAL`` (90%) of the value before.

Goals (``goals``): ``failed`` = 0, ``broken_streams`` = 0, ``keys_moved_fraction``
<= 1.1/N, and the hit rate back within ``after_window_s``. Each is True, False, or
None when it could not be measured (no recovery, no requests in a window).
Cost: O(R log R + W R) for R requests and W windows, trivial at drill sizes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.load import RequestRecord

HIT_RATE_GOAL = 0.9
MIN_WINDOW_REQUESTS = 3


@dataclass(frozen=True, kw_only=True)
class Windows:
    window_s: float = 15.0
    after_window_s: float = 30.0
    step_s: float = 2.5


def hit_rate(records: Sequence[RequestRecord], start_s: float, end_s: float,
             *, min_requests: int = 1) -> float | None:
    """Cached / prompt tokens of the succeeded requests started in [start_s, end_s)."""
    used = [r for r in records if r.ok and start_s <= r.started_s < end_s
            and r.prompt_tokens and r.cached_tokens is not None]
    if len(used) < min_requests:
        return None
    prompt = sum(r.prompt_tokens or 0 for r in used)
    return sum(r.cached_tokens or 0 for r in used) / prompt if prompt else None


def hit_rate_recovery_s(records: Sequence[RequestRecord], *, before: float | None,
                        recovered_at_s: float | None, windows: Windows) -> float | None:
    if before is None or recovered_at_s is None:
        return None
    wanted = HIT_RATE_GOAL * before
    last_start = max((r.started_s for r in records), default=recovered_at_s)
    start = recovered_at_s
    while start <= last_start:
        rate = hit_rate(records, start, start + windows.window_s,
                        min_requests=MIN_WINDOW_REQUESTS)
        if rate is not None and rate >= wanted - 1e-12:
            return round(start + windows.window_s - recovered_at_s, 3)
        start += windows.step_s
    return None


def timeline(records: Sequence[RequestRecord], *, bucket_s: float = 1.0) -> list[dict[str, Any]]:
    """Per bucket of end time: requests succeeded and failed, and the succeeded ones'
    hit rate (None in a bucket without usage)."""
    if not records:
        return []
    buckets = math.floor(max(r.ended_s for r in records) / bucket_s) + 1
    ok = [0] * buckets
    failed = [0] * buckets
    prompt = [0] * buckets
    cached = [0] * buckets
    for r in records:
        b = int(r.ended_s // bucket_s)
        if r.ok:
            ok[b] += 1
            if r.prompt_tokens and r.cached_tokens is not None:
                prompt[b] += r.prompt_tokens
                cached[b] += r.cached_tokens
        else:
            failed[b] += 1
    return [{"t_s": round(b * bucket_s, 3), "succeeded": ok[b], "failed": failed[b],
             "hit_rate": cached[b] / prompt[b] if prompt[b] else None}
            for b in range(buckets)]


# Request ids, uuids and other long hex or digit runs: two failures of one kind differ
# only in these, so they are masked before counting.
_IDS = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|\b[0-9a-fA-F]{12,}\b|\d+")


def error_kind(text: str) -> str:
    return _IDS.sub("#", text)


def error_summary(records: Sequence[RequestRecord], *, top: int = 5) -> list[dict[str, Any]]:
    """The most common failure texts, ids and numbers masked (first 120 characters),
    with counts."""
    counts = Counter(error_kind(r.error or f"status {r.status}")[:120]
                     for r in records if not r.ok)
    return [{"error": text, "count": n} for text, n in counts.most_common(top)]


def _goal(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound + 1e-12


def build_report(*, drill: str, replicas: int, records: Sequence[RequestRecord],
                 fault_at_s: float | None, recovered_at_s: float | None,
                 fault: Mapping[str, Any], counters: Mapping[str, int],
                 counters_present: bool, keys_moved_fraction: float | None,
                 replica_ids_before: Sequence[str], replica_ids_after: Sequence[str],
                 windows: Windows = Windows(), extra: Mapping[str, Any] | None = None,
                 ) -> dict[str, Any]:
    sent = len(records)
    succeeded = sum(1 for r in records if r.ok)
    broken = sum(1 for r in records if r.broken)
    before = after = None
    if fault_at_s is not None:
        before = hit_rate(records, max(0.0, fault_at_s - windows.window_s), fault_at_s)
    if recovered_at_s is not None:
        after = hit_rate(records, recovered_at_s, recovered_at_s + windows.after_window_s)
    back_s = hit_rate_recovery_s(records, before=before, recovered_at_s=recovered_at_s,
                                 windows=windows)
    recovery_s = (None if recovered_at_s is None or fault_at_s is None
                  else round(recovered_at_s - fault_at_s, 3))
    bound = 1.1 / replicas if replicas else math.nan
    hit_goal: bool | None
    if before is None or after is None:
        hit_goal = None  # no fault window or no request after recovery to judge
    elif before == 0:
        hit_goal = True  # nothing to get back to
    else:
        hit_goal = back_s is not None and back_s <= windows.after_window_s
    goals = {
        "failed_zero": sent - succeeded == 0,
        "broken_streams_zero": broken == 0,
        "keys_moved_within_bound": _goal(keys_moved_fraction, bound),
        "hit_rate_back_in_time": hit_goal,
    }
    streams = [r for r in records if r.stream]
    return {
        "drill": drill,
        "replicas": replicas,
        "sent": sent,
        "succeeded": succeeded,
        "failed": sent - succeeded,
        "retried": int(counters.get("retried", 0)),
        "resumed_streams": int(counters.get("resumed_streams", 0)),
        "broken_streams": broken,
        "recovery_s": recovery_s,
        "keys_moved_fraction": (None if keys_moved_fraction is None
                                else round(keys_moved_fraction, 4)),
        "hit_rate_before": None if before is None else round(before, 4),
        "hit_rate_after": None if after is None else round(after, 4),
        "hit_rate_recovery_s": back_s,
        "one_over_n": round(1 / replicas, 4) if replicas else None,
        "keys_moved_bound": round(bound, 4),
        "streams": len(streams),
        "failover_counters": counters_present,
        "failover_failed": int(counters.get("failover_failed", 0)),
        "goals": goals,
        "passed": all(v is True for v in goals.values()),
        "fault": {**fault, "at_s": fault_at_s, "recovered_at_s": recovered_at_s},
        "replica_ids_before": list(replica_ids_before),
        "replica_ids_after": list(replica_ids_after),
        "replicas_after": len(replica_ids_after),
        "errors": error_summary(records),
        "windows": {"window_s": windows.window_s, "after_window_s": windows.after_window_s,
                    "step_s": windows.step_s},
        **(extra or {}),
        "timeline": timeline(records),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def markdown(report: Mapping[str, Any]) -> str:
    """A short Markdown summary: the headline numbers, then each goal."""
    r = report
    lines = [
        f"### Drill `{r['drill']}` ({r['replicas']} replicas before the fault)",
        "",
        ("| sent | succeeded | failed | retried | resumed streams | broken streams "
         "| recovery s | keys moved (1/N) | hit rate before | after |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        (f"| {r['sent']} | {r['succeeded']} | {r['failed']} | {r['retried']} "
         f"| {r['resumed_streams']} | {r['broken_streams']} | {_fmt(r['recovery_s'])} "
         f"| {_pct(r['keys_moved_fraction'])} ({_pct(r['one_over_n'])}) "
         f"| {_pct(r['hit_rate_before'])} | {_pct(r['hit_rate_after'])} |"),
        "",
    ]
    labels = {"failed_zero": "no failed request",
              "broken_streams_zero": "no broken stream",
              "keys_moved_within_bound": f"keys moved <= 1.1/N ({_pct(r['keys_moved_bound'])})",
              "hit_rate_back_in_time": "hit rate back to 90% of before within "
                                       f"{r['windows']['after_window_s']:.0f} s"}
    for key, label in labels.items():
        value = r["goals"][key]
        mark = {True: "PASS", False: "FAIL", None: "n/a"}[value]
        lines.append(f"- {mark}: {label}")
    if not r["failover_counters"]:
        lines.append("- the service exports no failover counters: retried and resumed "
                     "streams read 0")
    for err in r["errors"][:3]:
        lines.append(f"- error x{err['count']}: `{err['error']}`")
    return "\n".join(lines) + "\n"
