"""The replica's engine-progress watch (hang signal), on a fake clock."""

from __future__ import annotations

from serving.replica.engine_progress import ProgressWatch, is_hung
from tests.unit.router.router_factories import FakeClock


def make_watch() -> tuple[ProgressWatch, FakeClock]:
    clock = FakeClock()
    return ProgressWatch(clock), clock


def test_idle_engine_is_never_stalled() -> None:
    watch, clock = make_watch()
    clock.advance(3600)
    assert watch.stalled_s() == 0 and not watch.needs_probe()


def test_busy_engine_that_steps_is_not_stalled_however_long_it_is_busy() -> None:
    watch, clock = make_watch()
    for _ in range(3):
        watch.begin()
    for _ in range(100):
        clock.advance(2.0)
        watch.on_step()
    assert watch.stalled_s() == 0
    clock.advance(1.5)
    assert watch.stalled_s() == 1.5


def test_work_without_a_step_counts_from_when_the_work_arrived() -> None:
    watch, clock = make_watch()
    clock.advance(500)  # idle for long: does not count
    watch.begin()
    clock.advance(7)
    assert watch.stalled_s() == 7
    assert is_hung(watch.report(), 5.0) and not is_hung(watch.report(), 10.0)


def test_completed_work_clears_the_stall_cancelled_work_does_not() -> None:
    watch, clock = make_watch()
    watch.begin()
    clock.advance(4)
    watch.end(completed=True)
    assert watch.stalled_s() == 0
    watch.begin()
    clock.advance(4)
    watch.end(completed=False)  # given up on a hung engine
    clock.advance(4)
    assert watch.stalled_s() == 8 and watch.needs_probe()
    watch.begin()  # the probe
    watch.on_step()
    watch.end(completed=True)
    assert watch.stalled_s() == 0 and not watch.needs_probe()


def test_reports_that_are_not_progress_reports_are_not_hung() -> None:
    assert not is_hung(None, 1.0)
    assert not is_hung({"stalled_s": "x"}, 1.0)
    assert is_hung({"stalled_s": 2.0, "active": 1}, 1.0)
