"""Admission's spill wait on the real policy: a spill parks on its prefix's owners, is
woken by the first completion a slot waiter did not take, decides again and commits;
busy owners, timeouts and departures; then the scripted policy for exact queue orders."""

from __future__ import annotations

from router_factories import FakeClock, ScriptedPolicy, make_policy, make_request

from router import (
    Admission,
    CacheAwarePolicy,
    Hold,
    Loads,
    Outcome,
    RouteRequest,
    Send,
    SpillWaitResult,
    WaitKind,
)

WAIT_S = 30.0


def two_replicas(*, spill_wait_s: float = WAIT_S) -> tuple[Admission, CacheAwarePolicy,
                                                           FakeClock, str, str]:
    """The prefix of ``make_request(16)`` learned on its home; the other replica idle."""
    clock = FakeClock()
    policy = make_policy(["a", "b"], clock=clock)
    home = policy.select(make_request(16), {}).replica_id
    other = "b" if home == "a" else "a"
    return Admission(policy, spill_wait_s=spill_wait_s, clock=clock), policy, clock, home, other


def at_bound(home: str, other: str, *, home_load: int = 2) -> Loads:
    """2 in flight on the home and none elsewhere: ceil(1.25 x 3 / 2) = 2 turns the
    next request of its prefix away (a spill)."""
    return Loads(in_flight={home: home_load, other: 0})


def held(step: object) -> Hold:
    assert isinstance(step, Hold), step
    return step


def test_a_spill_waits_for_the_owner_and_becomes_a_hit_when_it_frees_a_slot() -> None:
    admission, policy, clock, home, other = two_replicas()
    step = admission.admit(make_request(16), at_bound(home, other))
    assert isinstance(step, Hold)
    assert (step.kind, step.replicas, step.until_s) == (
        WaitKind.SPILL, frozenset({home}), clock.now + WAIT_S)
    # Held, not learned: the other replica is not an owner.
    assert policy.spill_owners(make_request(16)) == {home}
    assert admission.on_completed(home) == step.ticket
    again = admission.resume(step.ticket, at_bound(home, other, home_load=1))
    assert isinstance(again, Send)
    assert (again.decision.replica_id, again.decision.outcome, again.spill_wait) == (
        home, Outcome.OWNER_HIT, SpillWaitResult.OWNER_HIT)


def test_a_spill_goes_when_no_owner_frees_a_slot_in_time() -> None:
    admission, policy, clock, home, other = two_replicas()
    ticket = held(admission.admit(make_request(16), at_bound(home, other))).ticket
    clock.advance(WAIT_S)
    step = admission.resume(ticket, at_bound(home, other))
    assert isinstance(step, Send)
    assert (step.decision.replica_id, step.decision.outcome, step.spill_wait) == (
        other, Outcome.SPILL, SpillWaitResult.TIMEOUT)
    # Committed once taken: both replicas now own the prefix; nobody waits any more.
    assert policy.spill_owners(make_request(16)) == {home, other}
    assert admission.waiting(home, WaitKind.SPILL) == 0 and len(admission) == 0


def test_a_spill_whose_owner_is_still_at_the_bound_after_a_completion_goes() -> None:
    admission, _, _, home, other = two_replicas()
    ticket = held(admission.admit(make_request(16), at_bound(home, other))).ticket
    # A request completes there, but another was sent meanwhile: still 2 of 2.
    assert admission.on_completed(home) == ticket
    step = admission.resume(ticket, at_bound(home, other))
    assert isinstance(step, Send)
    assert (step.decision.outcome, step.spill_wait) == (Outcome.SPILL, SpillWaitResult.SPILL)


def test_a_spill_goes_at_once_when_its_owner_already_has_a_request_waiting() -> None:
    admission, policy, _, home, other = two_replicas()
    third = admission.admit(make_request(16), at_bound(home, other))
    assert isinstance(third, Hold)
    # The owner's next completion is the third's: the fourth spills at once.
    fourth = admission.admit(make_request(16), at_bound(home, other))
    assert isinstance(fourth, Send)
    assert (fourth.decision.replica_id, fourth.decision.outcome, fourth.spill_wait) == (
        other, Outcome.SPILL, SpillWaitResult.BUSY)
    assert policy.spill_owners(make_request(16)) == {home, other}
    # The third, woken by the completion, is an owner hit (the fourth's spill made
    # the other replica an owner too).
    assert admission.on_completed(home) == third.ticket
    again = admission.resume(third.ticket, Loads(in_flight={home: 1, other: 1}))
    assert isinstance(again, Send)
    assert (again.decision.outcome, again.spill_wait) == (
        Outcome.OWNER_HIT, SpillWaitResult.OWNER_HIT)


def test_without_the_wait_a_spill_goes_at_once() -> None:
    admission, policy, _, home, other = two_replicas(spill_wait_s=0.0)
    step = admission.admit(make_request(16), at_bound(home, other))
    assert isinstance(step, Send)
    assert (step.decision.replica_id, step.decision.outcome, step.spill_wait) == (
        other, Outcome.SPILL, None)
    assert policy.spill_owners(make_request(16)) == {home, other}


def test_a_spill_with_no_owner_among_the_candidates_goes_at_once() -> None:
    admission, _, _, home, other = two_replicas()
    step = admission.admit(make_request(16), Loads(in_flight={home: 2, other: 0},
                                                   candidates=(other,)))
    assert isinstance(step, Send) and step.spill_wait is None
    assert step.decision.outcome is Outcome.SPILL


def test_an_owner_that_leaves_wakes_its_spill_waiters() -> None:
    clock = FakeClock()
    policy = make_policy(["a", "b", "c"], clock=clock)
    home = policy.select(make_request(16), {}).replica_id
    admission = Admission(policy, spill_wait_s=WAIT_S, clock=clock)
    # 3 replicas: the bound is ceil(1.25 x 3 / 3) = 2 with 2 in flight on the owner.
    step = admission.admit(make_request(16), Loads(in_flight={home: 2}))
    assert isinstance(step, Hold)
    assert admission.on_replica_gone(home) == [step.ticket]
    policy.on_replica_removed(home)
    left = tuple(r for r in ("a", "b", "c") if r != home)
    again = admission.resume(step.ticket, Loads(in_flight={}, candidates=left))
    assert isinstance(again, Send) and again.decision.replica_id in left


def test_a_spill_decided_again_onto_a_full_replica_waits_for_a_slot_there() -> None:
    admission, _, _, home, other = two_replicas()
    ticket = held(admission.admit(make_request(16), at_bound(home, other))).ticket
    admission.on_completed(home)
    # The owner has room under the bound, but Serve's cap of 1 is reached there.
    step = admission.resume(ticket, Loads(in_flight={home: 1, other: 0}, max_in_flight=1))
    assert isinstance(step, Hold)
    # The spill wait's result is reported once, on the step where it ended.
    assert (step.kind, step.replicas, step.spill_wait) == (
        WaitKind.SLOT, frozenset({home}), SpillWaitResult.OWNER_HIT)
    assert admission.on_completed(home) == ticket
    final = admission.resume(ticket, Loads(in_flight={home: 0, other: 0}, max_in_flight=1))
    assert isinstance(final, Send) and final.spill_wait is None


# --- queue orders, on the scripted policy ------------------------------------------

def spill_of(session: str) -> RouteRequest:
    return RouteRequest(token_ids=(1, 2, 3, 4), session_id=session)


def test_one_wake_per_completion_a_slot_waiter_first_then_a_spill_waiter() -> None:
    policy = ScriptedPolicy(script={"s": [("c", Outcome.SPILL)]},
                            owners={"s": frozenset({"a"})})
    admission = Admission(policy, spill_wait_s=WAIT_S, clock=FakeClock())
    full = Loads(in_flight={"a": 1}, max_in_flight=1)
    spill = admission.admit(spill_of("s"), full)
    slot = admission.admit(spill_of("a"), full)
    assert isinstance(spill, Hold) and isinstance(slot, Hold)
    # The slot waiter parked later but is woken first.
    assert admission.on_completed("a") == slot.ticket
    later = admission.admit(spill_of("a"), full)
    assert isinstance(later, Hold)
    # Freed slots the replica reports wake slot waiters only; a completion wakes
    # the spill waiter once no slot waiter is left.
    assert admission.on_free_slots("a", 3) == [later.ticket]
    assert admission.on_completed("a") == spill.ticket
    assert admission.on_completed("a") is None


def test_a_spill_waiter_on_several_owners_leaves_every_queue_when_woken() -> None:
    policy = ScriptedPolicy(script={"first": [("c", Outcome.SPILL)] * 2,
                                    "second": [("c", Outcome.SPILL)] * 2},
                            owners={"first": frozenset({"a", "b"}),
                                    "second": frozenset({"b", "d"})})
    admission = Admission(policy, spill_wait_s=WAIT_S, clock=FakeClock())
    first = admission.admit(spill_of("first"), Loads(in_flight={}))
    second = admission.admit(spill_of("second"), Loads(in_flight={}))
    assert isinstance(first, Hold) and isinstance(second, Hold)
    assert first.replicas == {"a", "b"}
    assert [admission.waiting(r, WaitKind.SPILL) for r in ("a", "b")] == [1, 2]
    assert admission.on_completed("b") == first.ticket
    # The woken waiter left every queue it was in: "a" has nobody to wake.
    assert admission.waiting("a", WaitKind.SPILL) == 0 and admission.on_completed("a") is None
    assert admission.on_replica_gone("b") == [second.ticket]
    assert admission.waiting("d", WaitKind.SPILL) == 0
    for ticket in (first.ticket, second.ticket):
        step = admission.resume(ticket, Loads(in_flight={}))
        assert isinstance(step, Send) and step.spill_wait is SpillWaitResult.SPILL
    assert policy.commits == ["c", "c"] and len(admission) == 0


def test_queues_keep_nothing_once_every_wait_ended() -> None:
    """Stale copies of a park on several replicas do not pile up in queues nobody pops."""
    policy = ScriptedPolicy(script={f"r{i}": [("c", Outcome.SPILL)] * 2 for i in range(50)},
                            owners={f"r{i}": frozenset({"a", "b"}) for i in range(50)})
    clock = FakeClock()
    admission = Admission(policy, spill_wait_s=WAIT_S, clock=clock)
    tickets = []
    for i in range(50):
        step = admission.admit(spill_of(f"r{i}"), Loads(in_flight={}))
        if isinstance(step, Hold):
            tickets.append(step.ticket)
        # Wake each through "a" at once: its copy in "b"'s queue goes stale.
        assert admission.on_completed("a") in (None, *tickets)
    for ticket in tickets:
        admission.resume(ticket, Loads(in_flight={}))
    assert len(admission) == 0
    assert admission._spill._fifo == {} and admission._spill._counts == {}
