"""Report aggregation: counts, hit-rate windows, recovery, goals, Markdown."""

from __future__ import annotations

import pytest

from chaos.report import (
    Windows,
    build_report,
    hit_rate,
    hit_rate_recovery_s,
    markdown,
    timeline,
)
from tests.unit.chaos.chaos_fakes import make_record

WINDOWS = Windows(window_s=10.0, after_window_s=30.0, step_s=2.5)


def steady(start: float, end: float, *, cached: int, step: float = 1.0, first: int = 0):
    """One succeeded request per `step` seconds with 100 prompt tokens, `cached` of them hit."""
    out, t, i = [], start, first
    while t < end:
        out.append(make_record(i, started_s=t, cached=cached))
        t += step
        i += 1
    return out


def report_of(records, **kw):
    args = {"drill": "kill-replica", "replicas": 2, "records": records, "fault_at_s": 20.0,
                "recovered_at_s": 40.0, "fault": {"victim": "a"},
                "counters": {"retried": 3, "resumed_streams": 1}, "counters_present": True,
                "keys_moved_fraction": 0.5, "replica_ids_before": ["a", "b"],
                "replica_ids_after": ["b", "c"], "windows": WINDOWS}
    args.update(kw)
    return build_report(**args)


def test_hit_rate_is_token_weighted_over_succeeded_requests_started_in_the_window() -> None:
    records = [make_record(0, started_s=1, prompt=100, cached=50),
               make_record(1, started_s=2, prompt=300, cached=300),
               make_record(2, started_s=3, ok=False),
               make_record(3, started_s=9, prompt=100, cached=100)]
    assert hit_rate(records, 0, 5) == pytest.approx(350 / 400)
    assert hit_rate(records, 5, 8) is None
    assert hit_rate(records, 0, 5, min_requests=3) is None


def test_counts_add_up_and_broken_streams_are_failed() -> None:
    records = steady(0, 60, cached=80)
    records += [make_record(100, started_s=21, ok=False),
                make_record(101, started_s=22, ok=False, broken=True, stream=True)]
    r = report_of(records)
    assert r["sent"] == r["succeeded"] + r["failed"] == len(records)
    assert r["failed"] == 2 and r["broken_streams"] == 1 and r["streams"] == 1
    assert (r["retried"], r["resumed_streams"]) == (3, 1)
    assert r["goals"]["failed_zero"] is False and r["goals"]["broken_streams_zero"] is False
    assert r["errors"][0]["count"] == 2
    assert r["passed"] is False


def test_every_required_key_is_present() -> None:
    r = report_of(steady(0, 60, cached=80))
    for key in ("drill", "replicas", "sent", "succeeded", "failed", "retried",
                "resumed_streams", "broken_streams", "recovery_s", "keys_moved_fraction",
                "hit_rate_before", "hit_rate_after"):
        assert key in r
    assert r["recovery_s"] == 20.0 and r["replicas"] == 2


def test_hit_rate_before_uses_the_window_before_the_fault() -> None:
    records = steady(0, 10, cached=0) + steady(10, 20, cached=90, first=10) \
        + steady(40, 80, cached=90, first=20)
    r = report_of(records)
    assert r["hit_rate_before"] == pytest.approx(0.9)
    assert r["hit_rate_after"] == pytest.approx(0.9)
    assert r["hit_rate_recovery_s"] == pytest.approx(WINDOWS.window_s)
    assert r["goals"]["hit_rate_back_in_time"] is True


def test_hit_rate_that_comes_back_late_misses_the_goal() -> None:
    records = steady(10, 20, cached=90) + steady(40, 70, cached=10, first=10) \
        + steady(70, 90, cached=90, first=40)
    r = report_of(records)
    back = r["hit_rate_recovery_s"]
    assert back is not None and back > WINDOWS.after_window_s
    assert r["goals"]["hit_rate_back_in_time"] is False


def test_hit_rate_recovery_needs_enough_requests_in_a_window() -> None:
    records = steady(10, 20, cached=90) + [make_record(50, started_s=41, cached=90)]
    assert hit_rate_recovery_s(records, before=0.9, recovered_at_s=40.0,
                               windows=WINDOWS) is None


def test_no_recovery_leaves_recovery_dependent_values_unmeasured() -> None:
    r = report_of(steady(0, 60, cached=80), recovered_at_s=None, keys_moved_fraction=None)
    assert r["recovery_s"] is None and r["hit_rate_after"] is None
    assert r["goals"]["hit_rate_back_in_time"] is None
    assert r["goals"]["keys_moved_within_bound"] is None
    assert r["passed"] is False


def test_keys_moved_goal_is_eleven_tenths_over_n() -> None:
    assert report_of([], keys_moved_fraction=0.55)["goals"]["keys_moved_within_bound"] is True
    assert report_of([], keys_moved_fraction=0.56)["goals"]["keys_moved_within_bound"] is False


def test_a_clean_drill_passes() -> None:
    r = report_of(steady(0, 80, cached=80), keys_moved_fraction=0.3)
    assert r["passed"] is True


def test_timeline_buckets_by_end_time() -> None:
    records = [make_record(0, started_s=0.1, ended_s=0.5, cached=100),
               make_record(1, started_s=0.2, ended_s=2.2, ok=False)]
    rows = timeline(records)
    assert [(r["succeeded"], r["failed"]) for r in rows] == [(1, 0), (0, 0), (0, 1)]
    assert rows[0]["hit_rate"] == 1.0 and rows[1]["hit_rate"] is None


def test_markdown_shows_numbers_and_goals() -> None:
    r = report_of(steady(0, 60, cached=80) + [make_record(99, started_s=25, ok=False)],
                  counters={}, counters_present=False)
    text = markdown(r)
    assert "kill-replica" in text and "FAIL: no failed request" in text
    assert "no failover counters" in text
    assert f"| {r['sent']} | {r['succeeded']} | 1 |" in text


def test_errors_differing_only_in_ids_count_as_one_kind() -> None:
    records = [make_record(i, started_s=i, ok=False,
                           error=f'Internal Server Error (Request ID: {i:08d}-4ea4-4aaa-8bbb-'
                                 f'0123456789ab) on replica {i}')
               for i in range(4)]
    summary = report_of(records)["errors"]
    assert len(summary) == 1 and summary[0]["count"] == 4


def test_no_request_after_recovery_leaves_the_hit_rate_goal_unmeasured() -> None:
    r = report_of(steady(0, 30, cached=80))  # load ended before the recovery at 40 s
    assert r["hit_rate_after"] is None
    assert r["goals"]["hit_rate_back_in_time"] is None
