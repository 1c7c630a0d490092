"""The asyncio driver of the core's waiting protocol (serving/routing/parking.py): holds
parked as futures, woken by the hooks' tickets in the core's order, bounded, cancelled.
The protocol's own orders and outcomes are tested in tests/unit/router/test_admission_*.py."""

from __future__ import annotations

import asyncio
import time

from router import (
    Admission,
    CacheAwarePolicy,
    Loads,
    PolicyConfig,
    RouteRequest,
    Send,
    SpillWaitResult,
    WaitKind,
)
from serving.routing.parking import Parking

PROMPT = RouteRequest(token_ids=tuple(range(16)))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.new_event_loop().run_until_complete(coro)


def make_parking(*, slot_wait_s: float = 5.0, spill_wait_s: float = 0.0,
                 ) -> tuple[Parking, Admission, CacheAwarePolicy, list[SpillWaitResult]]:
    policy = CacheAwarePolicy(PolicyConfig(block_size=4, load_floor=0), replicas=["a", "b"])
    admission = Admission(policy, slot_wait_s=slot_wait_s, spill_wait_s=spill_wait_s)
    results: list[SpillWaitResult] = []
    return Parking(admission, on_spill_wait=results.append), admission, policy, results


def full(home: str, load: int = 1) -> Loads:
    """The home at its cap of 1 (or over), the other replica idle."""
    return Loads(in_flight={home: load}, max_in_flight=1)


def test_a_completion_wakes_the_oldest_parked_request_only() -> None:
    parking, admission, policy, _ = make_parking()
    home = policy.select(PROMPT, {}).replica_id

    async def scenario() -> list[str]:
        woken: list[str] = []
        freed = {"now": False}

        async def wait(name: str) -> None:
            step = admission.admit(PROMPT, full(home))
            sent = await parking.until_sent(
                step, lambda: full(home, 0 if freed["now"] else 1))
            assert isinstance(sent, Send) and sent.decision.replica_id == home
            woken.append(name)

        tasks = [asyncio.create_task(wait(n)) for n in ("first", "second", "third")]
        await asyncio.sleep(0.01)
        assert parking.parked() == 3 and admission.waiting(home, WaitKind.SLOT) == 3
        freed["now"] = True
        parking.on_completed(home)
        await asyncio.sleep(0.01)
        assert woken == ["first"] and parking.parked() == 2
        parking.on_completed("elsewhere")  # waiters of other replicas are not woken
        await asyncio.sleep(0.01)
        assert woken == ["first"]
        parking.on_free_slots(home, 2)
        await asyncio.gather(*tasks)
        return woken

    assert run(scenario()) == ["first", "second", "third"]


def test_a_wait_that_runs_out_offers_the_replica_and_swallows_no_later_wake() -> None:
    parking, admission, policy, _ = make_parking(slot_wait_s=0.02)
    home = policy.select(PROMPT, {}).replica_id

    async def scenario() -> None:
        started = time.monotonic()
        sent = await parking.until_sent(admission.admit(PROMPT, full(home)), lambda: full(home))
        assert isinstance(sent, Send) and sent.decision.replica_id == home
        assert 0.015 < time.monotonic() - started < 1.0
        assert parking.parked() == 0 and admission.waiting(home, WaitKind.SLOT) == 0
        late = asyncio.create_task(parking.until_sent(admission.admit(PROMPT, full(home)),
                                                      lambda: full(home, 0)))
        await asyncio.sleep(0.005)
        parking.on_completed(home)
        assert isinstance(await late, Send)

    run(scenario())


def test_a_cancelled_request_leaves_the_queue() -> None:
    parking, admission, policy, _ = make_parking()
    home = policy.select(PROMPT, {}).replica_id

    async def scenario() -> None:
        gone = asyncio.create_task(parking.until_sent(admission.admit(PROMPT, full(home)),
                                                      lambda: full(home, 0)))
        kept = asyncio.create_task(parking.until_sent(admission.admit(PROMPT, full(home)),
                                                      lambda: full(home, 0)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert admission.waiting(home, WaitKind.SLOT) == 1 and len(admission) == 1
        parking.on_completed(home)
        assert isinstance(await kept, Send) and len(admission) == 0

    run(scenario())


def test_a_replica_that_leaves_wakes_everyone_and_no_candidate_left_means_none() -> None:
    parking, admission, policy, _ = make_parking()
    home = policy.select(PROMPT, {}).replica_id

    async def scenario() -> list[Send | None]:
        tasks = [asyncio.create_task(parking.until_sent(admission.admit(PROMPT, full(home)),
                                                        lambda: None)) for _ in range(4)]
        await asyncio.sleep(0.01)
        parking.on_replica_gone(home)
        return list(await asyncio.gather(*tasks))

    assert run(scenario()) == [None] * 4
    assert len(admission) == 0


def test_each_spill_wait_result_is_reported_once() -> None:
    parking, admission, policy, results = make_parking(spill_wait_s=5.0)
    home = policy.select(PROMPT, {}).replica_id
    other = "b" if home == "a" else "a"
    at_bound = Loads(in_flight={home: 2, other: 0})

    async def scenario() -> None:
        first = asyncio.create_task(parking.until_sent(
            admission.admit(PROMPT, at_bound), lambda: Loads(in_flight={home: 1, other: 0})))
        await asyncio.sleep(0.01)
        # Every owner has a request waiting: the next spills at once.
        busy = await parking.until_sent(admission.admit(PROMPT, at_bound), lambda: at_bound)
        assert isinstance(busy, Send) and busy.decision.replica_id == other
        parking.on_completed(home)
        assert isinstance(await first, Send)

    run(scenario())
    assert results == [SpillWaitResult.BUSY, SpillWaitResult.OWNER_HIT]
