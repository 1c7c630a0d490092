"""The per-replica FIFO of requests waiting for a slot (serving/routing/slot_waiters.py)."""

from __future__ import annotations

import asyncio

from serving.routing.slot_waiters import SlotWaiters


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_completion_wakes_the_oldest_waiter_only() -> None:
    async def scenario() -> list[str]:
        waiters = SlotWaiters()
        woken: list[str] = []

        async def wait(name: str) -> None:
            assert await waiters.wait("a", timeout_s=5)
            woken.append(name)

        tasks = [asyncio.create_task(wait(n)) for n in ("first", "second", "third")]
        await asyncio.sleep(0.01)
        assert waiters.waiting("a") == 3
        assert waiters.wake_one("a")
        await asyncio.sleep(0.01)
        assert woken == ["first"] and waiters.waiting("a") == 2
        waiters.wake_one("a")
        waiters.wake_one("a")
        await asyncio.gather(*tasks)
        return woken

    assert run(scenario()) == ["first", "second", "third"]


def test_waiters_of_other_replicas_are_not_woken() -> None:
    async def scenario() -> None:
        waiters = SlotWaiters()
        task = asyncio.create_task(waiters.wait("b", timeout_s=5))
        await asyncio.sleep(0.01)
        assert not waiters.wake_one("a")
        await asyncio.sleep(0.01)
        assert not task.done()
        waiters.wake_all("b")
        assert await task

    run(scenario())


def test_a_timed_out_waiter_does_not_swallow_the_next_wake() -> None:
    async def scenario() -> None:
        waiters = SlotWaiters()
        assert not await waiters.wait("a", timeout_s=0.01)
        late = asyncio.create_task(waiters.wait("a", timeout_s=5))
        await asyncio.sleep(0.01)
        assert waiters.wake_one("a")
        assert await late
        assert waiters.waiting("a") == 0 and not waiters.wake_one("a")

    run(scenario())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        waiters = SlotWaiters()
        gone = asyncio.create_task(waiters.wait("a", timeout_s=5))
        kept = asyncio.create_task(waiters.wait("a", timeout_s=5))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert waiters.waiting("a") == 1
        assert waiters.wake_one("a")
        assert await kept

    run(scenario())


def test_wake_all_releases_every_waiter_of_a_departed_replica() -> None:
    async def scenario() -> int:
        waiters = SlotWaiters()
        tasks = [asyncio.create_task(waiters.wait("a", timeout_s=5)) for _ in range(4)]
        await asyncio.sleep(0.01)
        count = waiters.wake_all("a")
        assert all(await asyncio.gather(*tasks))
        return count

    assert run(scenario()) == 4


def test_a_completion_on_any_watched_replica_wakes_the_oldest_waiter() -> None:
    async def scenario() -> list[str]:
        waiters = SlotWaiters()
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
        waiters = SlotWaiters()
        assert not await waiters.wait_any({"a"}, timeout_s=0.02)
        assert waiters.waiting("a") == 0 and not waiters.wake_one("a")
        assert not await waiters.wait_any(set(), timeout_s=5)
        assert not await waiters.wait_any({"a"}, timeout_s=0)

    run(scenario())
