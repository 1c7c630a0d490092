"""PrefixRegistry: registration limits, matching, hit counting, sweeps and rewarms.

The routing side is the real policy (tests/unit/serving/prefixes/prefix_fakes.py); only the engine is fake.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from router import RouteRequest
from serving.prefixes.registry import PrefixError, PrefixRegistry
from serving.prefixes.store import PrefixStoreError
from tests.unit.serving.prefixes.prefix_fakes import (
    MODEL,
    OTHER,
    OWNER,
    SYSTEM,
    Clock,
    FakeBackend,
    make_policy,
    make_registry,
    make_store,
    system,
    user,
)


# The salt the ingress serves OWNER's chat requests under (no cache_salt of their own).
SALT = OWNER.cache_salt()


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


async def settle(registry: PrefixRegistry) -> None:
    """Let the registry's fire-and-forget store updates finish."""
    await asyncio.gather(*list(registry._pending))


def refuse(status: int, code: str) -> Any:
    return pytest.raises(PrefixError, check=lambda e: (e.status, e.code) == (status, code))


# --- register ---------------------------------------------------------------------


def test_register_prewarms_through_the_router_and_records_the_home() -> None:
    backend = FakeBackend()

    async def body() -> None:
        registry = make_registry(backend=backend)
        record, created = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                                  owner=OWNER, cache_salt="eu")
        assert created
        salt = OWNER.cache_salt("eu")
        assert backend.prewarms == [(MODEL, [SYSTEM], salt)]
        ids = await backend.token_ids([SYSTEM], salt)
        placement = backend.policy.placement(RouteRequest(token_ids=ids, cache_salt=salt))
        # The prewarm made its ring home the holder of every full block.
        assert placement.holders == {placement.home}
        assert (record.home, record.owner, record.cache_salt, record.ttl_s) == (
            placement.home, "acme", "eu", 60.0)
        assert record.prefix_tokens == len(ids)
        assert record.cacheable_tokens == len(ids) - len(ids) % 16
        again, created = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=30.0,
                                                 owner=OWNER, cache_salt="eu")
        assert not created and again.key == record.key and again.ttl_s == 30.0
        assert [r.key for r in await registry.records(OWNER.name)] == [record.key]
    run(body)


def test_key_ignores_how_the_content_is_spelled() -> None:
    async def body() -> None:
        registry = make_registry()
        a, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None, owner=OWNER)
        parts = {"role": "system", "content": [{"type": "text", "text": SYSTEM["content"]}]}
        b, created = await registry.register(model=MODEL, messages=[parts], ttl_s=None,
                                             owner=OWNER)
        assert (b.key, created) == (a.key, False)
        c, created = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                             owner=OWNER, cache_salt="other")
        assert created and c.key != a.key
    run(body)


@pytest.mark.parametrize("ttl_s", [0.0, -1.0, math.nan, math.inf, 3600.5])
def test_bad_ttl_is_400(ttl_s: float) -> None:
    async def body() -> None:
        with refuse(400, "invalid_request") as info:
            await make_registry().register(model=MODEL, messages=[SYSTEM], ttl_s=ttl_s,
                                           owner=OWNER)
        assert info.value.param == "ttl_s"
    run(body)


def test_refusals_before_any_engine_work() -> None:
    backend = FakeBackend()

    async def body() -> None:
        # 64-token blocks: an empty system message (32 fake tokens) fills none.
        registry = make_registry(backend=backend, max_prefix_tokens=100, block_size=64)
        with refuse(404, "model_not_found"):
            await registry.register(model="nope", messages=[SYSTEM], ttl_s=None, owner=OWNER)
        with refuse(400, "invalid_request"):
            await registry.register(model=MODEL, messages=[], ttl_s=None, owner=OWNER)
        with refuse(413, "request_too_large"):  # by characters: never tokenised
            await registry.register(model=MODEL, messages=[system("x" * 7000)], ttl_s=None,
                                    owner=OWNER)
        assert backend.tokenized == 0
        with refuse(413, "request_too_large") as info:  # by tokens
            await registry.register(model=MODEL, messages=[system("x" * 200)], ttl_s=None,
                                    owner=OWNER)
        assert "limit is 100 tokens" in info.value.message
        with refuse(400, "invalid_request") as info:  # not one full block
            await registry.register(model=MODEL, messages=[system("")], ttl_s=None, owner=OWNER)
        assert "shorter than one KV block" in info.value.message
        assert backend.prewarms == []
        assert await registry.records(OWNER.name) == []
    run(body)


def test_eviction_makes_the_router_forget_the_evicted_prefix() -> None:
    backend = FakeBackend()

    async def body() -> None:
        registry = make_registry(make_store(max_prefixes=1), backend)
        first, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                           owner=OWNER)
        await registry.register(model=MODEL, messages=[system("Another assistant, terse.")],
                                ttl_s=None, owner=OWNER)
        assert [r.key for r in await registry.records(OWNER.name)] != [first.key]
        assert registry.match(MODEL, [SYSTEM, user("hi")], SALT) is None
        ids = await backend.token_ids([SYSTEM], SALT)
        placement = backend.policy.placement(RouteRequest(token_ids=ids, cache_salt=SALT))
        assert placement.holders == frozenset()
    run(body)


# --- matching and counting --------------------------------------------------------


def test_match_finds_the_longest_registered_prefix() -> None:
    shot = [user("Example question"), {"role": "assistant", "content": "Example answer"}]

    async def body() -> None:
        registry = make_registry()
        short, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                           owner=OWNER)
        long, _ = await registry.register(model=MODEL, messages=[SYSTEM, *shot], ttl_s=None,
                                          owner=OWNER)
        assert registry.match(MODEL, [SYSTEM, user("q")], SALT).key == short.key
        assert registry.match(MODEL, [SYSTEM, *shot, user("q")], SALT).key == long.key
        assert registry.match(None, [SYSTEM], SALT).key == short.key  # the only model
        assert registry.match(MODEL, [SYSTEM, user("q")], OTHER.cache_salt()) is None
        assert registry.match(MODEL, [SYSTEM, user("q")], OWNER.cache_salt("eu")) is None
        assert registry.match("m2", [SYSTEM, user("q")], SALT) is None
        assert registry.match(MODEL, [user("q")], SALT) is None
        assert registry.match(MODEL, [], SALT) is None
        assert registry.match(MODEL, None, SALT) is None
    run(body)


def test_hits_and_misses_from_the_engines_cached_tokens() -> None:
    metrics = CollectorRegistry()

    async def body() -> None:
        registry = make_registry(metrics=metrics)
        record, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                            owner=OWNER)
        use = registry.match(MODEL, [SYSTEM, user("q")], SALT)
        assert use.cacheable_tokens == record.cacheable_tokens
        registry.observe(use, record.cacheable_tokens)  # every full block cached: hit
        registry.observe(use, record.cacheable_tokens + 16)  # and more: still a hit
        registry.observe(use, record.cacheable_tokens - 16)  # one block short: miss
        registry.observe(use, None)  # a stream without usage: neither
        await settle(registry)
        stored = (await registry.records(OWNER.name))[0]
        assert (stored.hits, stored.misses) == (2, 1)
        # Aggregates only: /metrics is public (serving/prefixes/metrics.py).
        assert metrics.get_sample_value("cacheroute_prefix_hits_total") == 2
        assert metrics.get_sample_value("cacheroute_prefix_misses_total") == 1
    run(body)


def test_a_store_outage_never_breaks_counting() -> None:
    class DownStore:
        async def record_use(self, key: str, *, hit: bool) -> bool:
            raise PrefixStoreError("down")

    async def body() -> None:
        registry = make_registry()
        await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None, owner=OWNER)
        use = registry.match(MODEL, [SYSTEM], SALT)
        registry._store = DownStore()  # type: ignore[assignment]
        registry.observe(use, 0)
        await settle(registry)  # logged, not raised
    run(body)


# --- delete -----------------------------------------------------------------------


def test_delete_forgets_ownership_and_matching() -> None:
    backend = FakeBackend()
    metrics = CollectorRegistry()

    async def body() -> None:
        registry = make_registry(backend=backend, metrics=metrics)
        record, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                            owner=OWNER)
        registry.observe(registry.match(MODEL, [SYSTEM], SALT), 0)
        await settle(registry)
        await registry.delete(record.key, OWNER.name)
        assert await registry.records(OWNER.name) == []
        assert registry.match(MODEL, [SYSTEM, user("q")], SALT) is None
        salt = OWNER.cache_salt()
        ids = await backend.token_ids([SYSTEM], salt)
        assert backend.policy.placement(
            RouteRequest(token_ids=ids, cache_salt=salt)).holders == frozenset()
        with refuse(404, "not_found"):
            await registry.delete(record.key, OWNER.name)
        with refuse(404, "not_found"):
            await registry.delete("../../etc", OWNER.name)
    run(body)


def test_store_outage_is_503() -> None:
    class DownStore:
        async def records(self) -> list:
            raise PrefixStoreError("prefix store (Redis): connection refused")

    async def body() -> None:
        registry = make_registry(DownStore())  # type: ignore[arg-type]
        with refuse(503, "service_unavailable"):
            await registry.records(OWNER.name)
    run(body)


# --- sweeps -----------------------------------------------------------------------


def test_sweep_shares_registrations_and_deletions_between_ingresses() -> None:
    store = make_store()
    here, there = FakeBackend(), FakeBackend()

    async def body() -> None:
        a = make_registry(store, here)
        b = make_registry(store, there)
        record, _ = await a.register(model=MODEL, messages=[SYSTEM], ttl_s=None, owner=OWNER)
        assert b.match(MODEL, [SYSTEM, user("q")], SALT) is None  # not listed yet
        # b's router has not learned the holder (in service, KV events teach it within a
        # second): the registration's grace keeps b from rewarming it meanwhile.
        assert await b.sweep() == 0
        assert b.match(MODEL, [SYSTEM, user("q")], SALT).key == record.key
        await a.delete(record.key, OWNER.name)
        await b.sweep()
        assert b.match(MODEL, [SYSTEM, user("q")], SALT) is None
        assert there.forgotten == 1  # b's router forgot the withdrawn prefix too
    run(body)


def test_sweep_rewarms_a_prefix_whose_home_left_and_only_once() -> None:
    backend = FakeBackend(make_policy(("r0", "r1", "r2")))
    metrics = CollectorRegistry()
    clock = Clock()

    async def body() -> None:
        registry = make_registry(make_store(clock), backend, metrics=metrics)
        record, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                            owner=OWNER)
        clock.advance(5)  # past the registration's grace
        assert await registry.sweep() == 0  # its home holds it
        backend.policy.set_replicas({"r0", "r1", "r2"} - {record.home})  # the home died
        assert await registry.sweep() == 1
        assert len(backend.prewarms) == 2
        rewarmed = (await registry.records(OWNER.name))[0]
        assert rewarmed.home not in (None, record.home)
        assert metrics.get_sample_value("cacheroute_prefix_rewarms_total") == 1
        assert await registry.sweep() == 0  # the new home holds it now
    run(body)


def test_one_ingress_rewarms_when_several_notice() -> None:
    clock = Clock()
    store = make_store(clock)
    backends = [FakeBackend(), FakeBackend()]

    async def body() -> None:
        registries = [make_registry(store, b) for b in backends]
        await registries[0].register(model=MODEL, messages=[SYSTEM], ttl_s=None, owner=OWNER)
        # The second ingress's router never saw the prefix: nobody holds it for it, and
        # after a failure nobody does for the first one either.
        for b in backends:
            b.policy.set_replicas(["r9"])
        clock.advance(5)  # past the registration's grace
        assert sum([await r.sweep() for r in registries]) == 1
    run(body)


def test_a_holder_other_than_the_recorded_home_updates_the_record() -> None:
    backend = FakeBackend()

    async def body() -> None:
        registry = make_registry(backend=backend)
        record, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                            owner=OWNER)
        ids = await backend.token_ids([SYSTEM], SALT)
        backend.policy.forget_prefix(RouteRequest(token_ids=ids, cache_salt=SALT))
        # The home is full: the next request spills, and its replica holds the prefix.
        spill = backend.policy.select(RouteRequest(token_ids=ids, cache_salt=SALT),
                                      {record.home: 100})
        assert spill.replica_id != record.home
        assert await registry.sweep() == 0
        assert (await registry.records(OWNER.name))[0].home == spill.replica_id
        assert len(backend.prewarms) == 1
    run(body)


def test_policies_without_an_ownership_index_report_no_home_and_never_rewarm() -> None:
    backend = FakeBackend(tracks_placement=False)

    async def body() -> None:
        registry = make_registry(backend=backend)
        record, _ = await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None,
                                            owner=OWNER)
        assert record.home is None
        backend.policy.set_replicas(["r9"])
        assert await registry.sweep() == 0
        assert len(backend.prewarms) == 1
    run(body)


def test_sweeping_runs_in_the_background_and_stops_on_close() -> None:
    backend = FakeBackend()

    async def body() -> None:
        registry = make_registry(make_store(time.time), backend,  # type: ignore[arg-type]
                                 rewarm_interval_s=0.01)
        await registry.register(model=MODEL, messages=[SYSTEM], ttl_s=None, owner=OWNER)
        registry.ensure_sweeping()
        registry.ensure_sweeping()  # idempotent
        backend.policy.set_replicas(["r7"])
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(backend.prewarms) == 2:
                break
        assert len(backend.prewarms) == 2
        assert (await registry.records(OWNER.name))[0].home == "r7"
        await registry.close()
    run(body)
