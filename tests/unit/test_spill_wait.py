"""The spill wait: the parking primitive (serving/spill_wait.py) and the adapter's use
of it on Ray's fake replicas (serving/ray_router.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ray.serve._private.test_utils import FakeRunningReplica

from router import Outcome
from serving.router_metrics import SPILL_WAITS
from serving.spill_wait import SpillWaiters
from tests.unit.test_ray_router import (
    LOOP,
    SYSTEM,
    choose,
    make_pending,
    make_replicas,
    make_router,
    on_loop,
)
from tests.unit.test_ray_router import tiny_model as tiny_model  # noqa: F401 (fixture)


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_completion_on_any_watched_replica_wakes_the_oldest_waiter() -> None:
    async def scenario() -> list[str]:
        waiters = SpillWaiters()
        woken: list[str] = []

        async def wait(name: str, replicas: set[str]) -> None:
            assert await waiters.wait_any(replicas, timeout_s=5)
            woken.append(name)

        tasks = [asyncio.create_task(wait("first", {"a", "b"})),
                 asyncio.create_task(wait("second", {"b"}))]
        await asyncio.sleep(0.01)
        assert waiters.waiting("a") == 1 and waiters.waiting("b") == 2
        assert waiters.wake_one("b")
        await asyncio.sleep(0.01)
        assert woken == ["first"]
        # The woken waiter left every queue it was in: "a" has nobody to wake.
        assert waiters.waiting("a") == 0 and not waiters.wake_one("a")
        assert waiters.wake_all("b") == 1
        await asyncio.gather(*tasks)
        return woken

    assert run(scenario()) == ["first", "second"]


def test_a_wait_times_out_and_nothing_to_watch_returns_at_once() -> None:
    async def scenario() -> None:
        waiters = SpillWaiters()
        assert not await waiters.wait_any({"a"}, timeout_s=0.02)
        assert waiters.waiting("a") == 0 and not waiters.wake_one("a")
        assert not await waiters.wait_any(set(), timeout_s=5)
        assert not await waiters.wait_any({"a"}, timeout_s=0)

    run(scenario())


def _burst(router, replicas):
    """The owner of SYSTEM at the bound: 2 in flight there, none on the other replica,
    so ceil(1.25 x 3 / 2) = 2 turns a third request away (a spill)."""
    home = choose(router, make_pending(SYSTEM, "warm"))[0][0]
    owner = next(r for r in replicas if r.replica_id.unique_id == home)
    for _ in range(2):
        on_loop(router.on_send_request, owner.replica_id)
    return home, owner


def _waits(result: str) -> float:
    return SPILL_WAITS.labels(result=result)._value.get()


def test_a_spill_waits_for_the_owner_and_becomes_a_hit_when_it_frees_a_slot(
        tiny_model: Path) -> None:  # noqa: F811
    replicas = make_replicas(2)
    router = make_router(tiny_model, replicas, spill_wait_s=30)
    home, owner = _burst(router, replicas)
    hits_before = _waits("owner_hit")
    parked = make_pending(SYSTEM, "third")
    probe = make_tokens_request(router)

    async def scenario() -> list[list[str]]:
        task = asyncio.ensure_future(router.choose_replicas(
            list(router.curr_replicas.values()), parked))
        await asyncio.sleep(0.05)
        assert not task.done(), "spilled at once instead of waiting for the owner"
        # Learned nothing while parked: the other replica is not an owner.
        assert router.policy.spill_owners(probe) == {home}
        router.on_request_completed(owner.replica_id, "i-first")
        router.decrement_queue_len_cache(owner.replica_id)
        tiers = await asyncio.wait_for(task, 5)
        return [[r.replica_id.unique_id for r in tier] for tier in tiers]

    assert LOOP.run_until_complete(scenario()) == [[home]]
    assert router.last_decision.outcome is Outcome.OWNER_HIT
    assert _waits("owner_hit") == hits_before + 1


def make_tokens_request(router):
    return LOOP.run_until_complete(router.route_request(make_pending(SYSTEM, "probe")))


def test_a_spill_goes_when_no_owner_frees_a_slot_in_time(tiny_model: Path) -> None:  # noqa: F811
    replicas = make_replicas(2)
    router = make_router(tiny_model, replicas, spill_wait_s=0.05)
    home, _ = _burst(router, replicas)
    timeouts_before = _waits("timeout")
    other = choose(router, make_pending(SYSTEM, "third"))[0][0]
    assert other != home and router.last_decision.outcome is Outcome.SPILL
    assert _waits("timeout") == timeouts_before + 1
    # The spill was learned once committed: both replicas now own the prefix.
    assert router.policy.spill_owners(make_tokens_request(router)) == {home, other}


def test_a_spill_whose_owner_is_still_at_the_bound_after_a_completion_goes(
        tiny_model: Path) -> None:  # noqa: F811
    replicas = make_replicas(2)
    router = make_router(tiny_model, replicas, spill_wait_s=30)
    home, owner = _burst(router, replicas)
    spills_before = _waits("spill")
    parked = make_pending(SYSTEM, "third")

    async def scenario() -> list[list[str]]:
        task = asyncio.ensure_future(router.choose_replicas(
            list(router.curr_replicas.values()), parked))
        await asyncio.sleep(0.05)
        # A request completes there, but another was sent meanwhile: still 2 of 2.
        router.on_send_request(owner.replica_id)
        router.on_request_completed(owner.replica_id, "i-first")
        tiers = await asyncio.wait_for(task, 5)
        return [[r.replica_id.unique_id for r in tier] for tier in tiers]

    tiers = LOOP.run_until_complete(scenario())
    assert tiers != [[home]] and router.last_decision.outcome is Outcome.SPILL
    assert _waits("spill") == spills_before + 1


def test_without_the_wait_a_spill_goes_at_once(tiny_model: Path) -> None:  # noqa: F811
    replicas = make_replicas(2)
    router = make_router(tiny_model, replicas, spill_wait_s=0)
    home, _ = _burst(router, replicas)
    assert choose(router, make_pending(SYSTEM, "third"))[0][0] != home
    assert router.last_decision.outcome is Outcome.SPILL


@pytest.mark.parametrize("gone", ["died", "left"])
def test_an_owner_that_leaves_wakes_its_waiters(tiny_model: Path, gone: str) -> None:  # noqa: F811
    replicas = [FakeRunningReplica(f"replica-{i}") for i in range(3)]
    router = make_router(tiny_model, replicas, spill_wait_s=30)
    home = choose(router, make_pending(SYSTEM, "warm"))[0][0]
    owner = next(r for r in replicas if r.replica_id.unique_id == home)
    # 3 replicas: the bound is ceil(1.25 x 3 / 3) = 2 with 2 in flight on the owner.
    for _ in range(2):
        on_loop(router.on_send_request, owner.replica_id)
    parked = make_pending(SYSTEM, "third")

    async def scenario() -> list[list[str]]:
        task = asyncio.ensure_future(router.choose_replicas(
            list(router.curr_replicas.values()), parked))
        await asyncio.sleep(0.05)
        assert not task.done()
        if gone == "died":
            router.on_replica_actor_died(owner.replica_id)
        else:
            router.update_replicas([r for r in replicas if r is not owner])
        tiers = await asyncio.wait_for(task, 5)
        return [[r.replica_id.unique_id for r in tier] for tier in tiers]

    tiers = LOOP.run_until_complete(scenario())
    assert tiers and home not in tiers[0]
