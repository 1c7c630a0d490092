"""HoldQueue: oldest first among the requests a freed replica may take."""

from __future__ import annotations

from bench.sim.hold_queue import HoldQueue
from tests.unit.bench.sim.sim_factories import make_request


def test_a_freed_replica_takes_the_oldest_request_it_may_serve() -> None:
    queue = HoldQueue()
    queue.add(make_request(0), frozenset({"a"}))
    queue.add(make_request(1), None)
    queue.add(make_request(2), frozenset({"a", "b"}))
    queue.add(make_request(3), frozenset({"b"}))
    assert len(queue) == 4
    assert queue.pop_for("b").index == 1  # type: ignore[union-attr]  # 0 is a's only
    assert queue.pop_for("b").index == 2  # type: ignore[union-attr]
    assert queue.pop_for("a").index == 0  # type: ignore[union-attr]
    assert queue.pop_for("a") is None  # 2's copy is skipped: b took it
    assert queue.pop_for("c") is None and len(queue) == 1
    assert queue.pop_for("b").index == 3  # type: ignore[union-attr]
    assert len(queue) == 0
