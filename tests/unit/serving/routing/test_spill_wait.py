"""The spill wait through the Ray adapter on Ray's fake replicas: the core's protocol
(router/admission.py, tests/unit/router/test_admission_spill.py) parked on Serve's
event loop (serving/routing/parking.py) and woken by Serve's hooks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ray.serve._private.test_utils import FakeRunningReplica

from router import Outcome
from serving.routing.metrics import SPILL_WAITS
from tests.unit.serving.routing.test_cacheroute import (
    LOOP,
    SYSTEM,
    choose,
    make_pending,
    make_replicas,
    make_router,
    on_loop,
    route_request,
)
from tests.unit.serving.routing.test_cacheroute import tiny_model as tiny_model  # noqa: F401 (fixture)


def _burst(router, replicas):
    """The owner of SYSTEM at the bound: 2 in flight there, none on the other replica,
    so ceil(1.25 x 3 / 2) = 2 turns a third request away (a spill)."""
    home = choose(router, make_pending(SYSTEM, "warm"))[0][0]
    owner = next(r for r in replicas if r.replica_id.unique_id == home)
    for _ in range(2):
        on_loop(router.on_send_request, owner.replica_id)
    return home, owner


def _park_then(router, parked, meanwhile) -> list[list[str]]:
    """Route ``parked``, check it is waiting rather than routed, run ``meanwhile`` (on
    the router's loop), and return the tiers it is finally offered."""
    async def scenario() -> list[list[str]]:
        task = asyncio.ensure_future(router.choose_replicas(
            list(router.curr_replicas.values()), parked))
        await asyncio.sleep(0.05)
        assert not task.done(), "spilled at once instead of waiting for the owner"
        meanwhile()
        tiers = await asyncio.wait_for(task, 5)
        return [[r.replica_id.unique_id for r in tier] for tier in tiers]

    return LOOP.run_until_complete(scenario())


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

    def meanwhile() -> None:
        # Learned nothing while parked: the other replica is not an owner.
        assert router.policy.spill_owners(probe) == {home}
        router.on_request_completed(owner.replica_id, "i-first")
        router.decrement_queue_len_cache(owner.replica_id)

    assert _park_then(router, parked, meanwhile) == [[home]]
    assert router.last_decision.outcome is Outcome.OWNER_HIT
    assert _waits("owner_hit") == hits_before + 1


def make_tokens_request(router):
    return route_request(router, make_pending(SYSTEM, "probe"))


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

    def meanwhile() -> None:
        # A request completes there, but another was sent meanwhile: still 2 of 2.
        router.on_send_request(owner.replica_id)
        router.on_request_completed(owner.replica_id, "i-first")

    tiers = _park_then(router, parked, meanwhile)
    assert tiers != [[home]] and router.last_decision.outcome is Outcome.SPILL
    assert _waits("spill") == spills_before + 1


def test_a_spill_goes_at_once_when_its_owner_already_has_a_request_waiting(
        tiny_model: Path) -> None:  # noqa: F811
    replicas = make_replicas(2)
    router = make_router(tiny_model, replicas, spill_wait_s=30)
    home, owner = _burst(router, replicas)
    busy_before, hits_before = _waits("busy"), _waits("owner_hit")
    parked, fourth_request = make_pending(SYSTEM, "third"), make_pending(SYSTEM, "fourth")
    spilled: list[list[list[str]]] = []

    def meanwhile() -> None:
        # A fourth request of the prefix: the owner's next completion is the third's,
        # so the fourth spills at once instead of waiting behind it.
        async def fourth() -> None:
            tiers = await router.choose_replicas(list(router.curr_replicas.values()),
                                                 fourth_request)
            spilled.append([[r.replica_id.unique_id for r in tier] for tier in tiers])

        LOOP.create_task(fourth())

    async def complete_after_the_fourth() -> None:
        for _ in range(500):
            if spilled:
                break
            await asyncio.sleep(0.01)
        router.on_request_completed(owner.replica_id, "i-first")
        router.decrement_queue_len_cache(owner.replica_id)

    def then_complete() -> None:
        meanwhile()
        LOOP.create_task(complete_after_the_fourth())

    _park_then(router, parked, then_complete)
    assert spilled and spilled[0][0] != [home]
    assert _waits("busy") == busy_before + 1
    # The third, woken by the completion, became an owner hit (on the owner that
    # freed a slot or on the one the fourth's spill made).
    assert router.last_decision.outcome is Outcome.OWNER_HIT
    assert _waits("owner_hit") == hits_before + 1


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

    def meanwhile() -> None:
        if gone == "died":
            router.on_replica_actor_died(owner.replica_id)
        else:
            router.update_replicas([r for r in replicas if r is not owner])

    tiers = _park_then(router, parked, meanwhile)
    assert tiers and home not in tiers[0]
