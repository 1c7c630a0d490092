"""Admission (router/admission.py): slot waits in per-replica FIFO queues, wakes, timeouts,
cancellation and failover, on a scripted policy whose decisions the tests name."""

from __future__ import annotations

import math

import pytest
from router_factories import FakeClock, ScriptedPolicy

from router import (
    SLOT_WAIT_S,
    Admission,
    Hold,
    Loads,
    Outcome,
    RouteRequest,
    Send,
    WaitKind,
)

# Serve's max_ongoing_requests in these tests: one request fills a replica.
CAP = 1


def make_admission(policy: ScriptedPolicy | None = None, *, clock: FakeClock | None = None,
                   **kwargs: float) -> tuple[Admission, ScriptedPolicy, FakeClock]:
    policy = policy or ScriptedPolicy()
    clock = clock or FakeClock()
    return Admission(policy, clock=clock, **kwargs), policy, clock


def loads(*, cap: int | None = CAP, candidates: tuple[str, ...] | None = None,
          **in_flight: int) -> Loads:
    return Loads(in_flight=in_flight, max_in_flight=cap, candidates=candidates)


def to(replica: str) -> RouteRequest:
    """A keyed request the scripted policy sends to ``replica``."""
    return RouteRequest(token_ids=(1, 2, 3, 4), session_id=replica)


def held(step: object) -> Hold:
    assert isinstance(step, Hold), step
    return step


def sent(step: object) -> str:
    assert isinstance(step, Send), step
    return step.decision.replica_id


def test_a_request_for_a_replica_with_room_is_sent_at_once() -> None:
    admission, policy, _ = make_admission()
    step = admission.admit(to("a"), loads(a=0))
    assert sent(step) == "a" and step == Send(step.decision)  # type: ignore[union-attr]
    assert repr(step) == repr(Send(step.decision))  # type: ignore[union-attr]
    assert len(admission) == 0 and policy.decided == [("a", {"a": 0}, False)]


def test_a_request_for_a_full_replica_waits_in_its_queue_until_a_time() -> None:
    admission, _, clock = make_admission()
    step = held(admission.admit(to("a"), loads(a=1)))
    assert (step.kind, step.replicas, step.until_s, step.spill_wait) == (
        WaitKind.SLOT, frozenset({"a"}), clock.now + SLOT_WAIT_S, None)
    assert admission.waiting("a", WaitKind.SLOT) == 1 and len(admission) == 1


def test_a_completion_wakes_the_oldest_waiter_only_which_decides_again() -> None:
    admission, policy, _ = make_admission()
    tickets = [held(admission.admit(to("a"), loads(a=1))).ticket for _ in range(3)]
    assert admission.on_completed("a") == tickets[0]
    assert admission.waiting("a", WaitKind.SLOT) == 2
    # Decided again with the loads of that moment: the slot is free.
    assert sent(admission.resume(tickets[0], loads(a=0))) == "a"
    assert policy.decided[-1] == ("a", {"a": 0}, False)
    assert [admission.on_completed("a"), admission.on_completed("a")] == tickets[1:]
    assert admission.on_completed("a") is None and admission.waiting("a", WaitKind.SLOT) == 0


def test_a_woken_request_whose_replica_is_full_again_waits_at_the_back() -> None:
    admission, _, _ = make_admission()
    first, second = (held(admission.admit(to("a"), loads(a=1))).ticket for _ in range(2))
    assert admission.on_completed("a") == first
    # Another request took the slot meanwhile: back in the queue, behind the second.
    again = held(admission.resume(first, loads(a=1)))
    assert again.ticket == first
    assert [admission.on_completed("a"), admission.on_completed("a")] == [second, first]


def test_waiters_of_other_replicas_are_not_woken() -> None:
    admission, _, _ = make_admission()
    ticket = held(admission.admit(to("b"), loads(b=1))).ticket
    assert admission.on_completed("a") is None
    assert admission.waiting("b", WaitKind.SLOT) == 1
    assert admission.on_replica_gone("b") == [ticket]


def test_a_timed_out_waiter_is_offered_its_replica_and_swallows_no_later_wake() -> None:
    admission, policy, clock = make_admission()
    ticket = held(admission.admit(to("a"), loads(a=1))).ticket
    clock.advance(SLOT_WAIT_S)
    # Not woken: offered the full replica anyway (Serve probes it and asks again),
    # without a decision of its own.
    decisions = len(policy.decided)
    assert sent(admission.resume(ticket, loads(a=1))) == "a"
    assert len(policy.decided) == decisions and len(admission) == 0
    late = held(admission.admit(to("a"), loads(a=1))).ticket
    assert admission.on_completed("a") == late
    assert admission.waiting("a", WaitKind.SLOT) == 0 and admission.on_completed("a") is None


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission, _, _ = make_admission()
    gone, kept = (held(admission.admit(to("a"), loads(a=1))).ticket for _ in range(2))
    admission.cancel(gone)
    assert admission.waiting("a", WaitKind.SLOT) == 1 and len(admission) == 1
    assert admission.on_completed("a") == kept
    admission.cancel(gone)  # twice, or after a wake: nothing to do
    with pytest.raises(KeyError):
        admission.resume(gone, loads(a=0))


def test_a_replica_that_leaves_wakes_every_waiter_to_decide_among_the_rest() -> None:
    policy = ScriptedPolicy(script={"a": [("a", Outcome.OWNER_HIT)] * 4 + [
        ("b", Outcome.RING_HOME)] * 4})
    admission, _, _ = make_admission(policy)
    tickets = [held(admission.admit(to("a"), loads(a=1))).ticket for _ in range(4)]
    assert admission.on_replica_gone("a") == tickets
    assert admission.waiting("a", WaitKind.SLOT) == 0
    left = loads(b=0, c=0, candidates=("b", "c"))
    assert [sent(admission.resume(t, left)) for t in tickets] == ["b"] * 4


def test_free_slots_reported_by_the_replica_wake_that_many_slot_waiters() -> None:
    admission, _, _ = make_admission()
    tickets = [held(admission.admit(to("a"), loads(a=1))).ticket for _ in range(3)]
    assert admission.on_free_slots("a", 2) == tickets[:2]
    assert admission.on_free_slots("a", 0) == []
    assert admission.on_free_slots("a", 5) == tickets[2:]


def test_a_chosen_replica_that_is_no_candidate_is_not_waited_for() -> None:
    admission, _, _ = make_admission()
    # Serve did not offer "a" (it left meanwhile): the adapter falls back to the ranking.
    assert sent(admission.admit(to("a"), loads(a=1, b=0, candidates=("b",)))) == "a"
    # No cap, or no cap for that replica: nothing is ever full.
    assert sent(admission.admit(to("a"), loads(cap=None, a=99))) == "a"
    per_replica = Loads(in_flight={"a": 5}, max_in_flight={"b": 1})
    assert sent(admission.admit(to("a"), per_replica)) == "a"
    assert held(admission.admit(to("a"), Loads(in_flight={"a": 1}, max_in_flight={"a": 1})))


def test_a_request_with_a_whole_ranking_never_waits_for_one_replica() -> None:
    # NO_KEY (nothing cached): Serve falls through the ranked replicas itself.
    policy = ScriptedPolicy(script={"a": [("a", Outcome.NO_KEY)]})
    admission, _, _ = make_admission(policy)
    step = admission.admit(to("a"), loads(a=1))
    assert isinstance(step, Send) and step.decision.send_order == ("a", "b", "c")


def test_a_retry_goes_past_the_replicas_that_failed_it_without_waiting() -> None:
    admission, policy, _ = make_admission(spill_wait_s=5.0)
    step = admission.admit(to("a"), loads(a=1, b=1), avoid=frozenset({"a"}))
    assert isinstance(step, Send)
    assert (step.decision.replica_id, step.decision.outcome) == ("b", Outcome.FAILOVER)
    assert step.decision.send_order == ("b", "c")  # a failover falls through, never waits
    # A retry never holds a spill either (it already waited for a failure).
    assert policy.decided[-1][2] is False
    # Every replica failed it: the usual choice.
    everyone = admission.admit(to("a"), loads(a=0), avoid=frozenset({"a", "b", "c"}))
    assert sent(everyone) == "a"


def test_a_woken_retry_is_moved_past_its_failed_replicas_again() -> None:
    policy = ScriptedPolicy(script={"b": [("b", Outcome.OWNER_HIT)] * 2})
    admission, _, _ = make_admission(policy)
    # "a" failed it; its choice "b" is not avoided but full: it waits for "b".
    ticket = held(admission.admit(to("b"), loads(b=1), avoid=frozenset({"a"}))).ticket
    assert admission.on_completed("b") == ticket
    assert sent(admission.resume(ticket, loads(b=0))) == "b"


def test_waits_are_bounded_by_the_given_limits_and_validated() -> None:
    admission, _, clock = make_admission(slot_wait_s=math.inf)
    assert held(admission.admit(to("a"), loads(a=1))).until_s == math.inf
    for bad in ({"spill_wait_s": -1.0}, {"spill_wait_s": math.inf}, {"slot_wait_s": 0.0}):
        with pytest.raises(ValueError):
            Admission(ScriptedPolicy(), clock=clock, **bad)


def test_decisions_count_first_decisions_and_re_decisions() -> None:
    admission, _, _ = make_admission()
    admission.admit(to("a"), loads(a=0))
    ticket = held(admission.admit(to("a"), loads(a=1))).ticket
    admission.on_completed("a")
    admission.resume(ticket, loads(a=0))
    assert admission.decisions == 3
