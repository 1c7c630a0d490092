"""The request -> replica log shared by the router and the failover loop."""

from __future__ import annotations

import pytest

from serving.failover.attempts import AttemptLog


def test_records_the_latest_attempt_and_what_to_avoid() -> None:
    log = AttemptLog()
    log.record("r1", "a")
    log.record("r1", "b")
    assert log.replica_of("r1") == "b"
    log.avoid("r1", "b")
    log.avoid("r1", "a")
    assert log.avoided("r1") == {"a", "b"}
    assert log.avoided("other") == frozenset() and log.replica_of("other") is None
    log.forget("r1")
    assert log.replica_of("r1") is None and len(log) == 0


def test_is_bounded_oldest_first_and_ignores_empty_keys() -> None:
    log = AttemptLog(max_entries=2)
    for key in ("r1", "r2", "r3"):
        log.record(key, "a")
    log.record("", "a")
    log.avoid("", "a")
    assert len(log) == 2 and log.replica_of("r1") is None and log.replica_of("r3") == "a"
    with pytest.raises(ValueError):
        AttemptLog(max_entries=0)


def test_ejected_set() -> None:
    log = AttemptLog()
    log.set_ejected(frozenset({"a"}))
    assert log.is_ejected("a") and not log.is_ejected("b")


def test_next_attempt_clears_the_replica_but_keeps_what_to_avoid() -> None:
    log = AttemptLog()
    log.record("r1", "a")
    log.avoid("r1", "a")
    log.next_attempt("r1")
    assert log.replica_of("r1") is None and log.avoided("r1") == {"a"}
