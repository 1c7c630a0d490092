"""PrefixStore: one suite, run against the in-memory store and a real redis-server.

Both get the same fake clock, so TTL and LRU outcomes are exact and equal.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.prefixes.store import (
    InMemoryPrefixStore,
    OwnerQuota,
    PrefixKey,
    PrefixSpec,
    PrefixStore,
    PrefixStoreError,
    StoreLimits,
    canonical_json,
    canonical_message,
    is_prefix_key,
    prefix_key,
)
from serving.tenants.identity import cache_salt_of
from tests.redis_server import redis_server_binary, running_redis
from tests.unit.serving.prefixes.prefix_fakes import Clock

LIMITS = StoreLimits(max_prefixes=4, max_total_tokens=1000)


StoreFactory = Callable[[StoreLimits, Clock], PrefixStore]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    with running_redis(binary, tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "memory":
        return lambda limits, clock: InMemoryPrefixStore(limits, clock=clock)
    from serving.prefixes.store_redis import RedisPrefixStore

    url = request.getfixturevalue("redis_url")
    namespace = f"test-{uuid.uuid4().hex}"  # each test its own, empty registry
    return lambda limits, clock: RedisPrefixStore.from_url(url, limits, clock=clock,
                                                           namespace=namespace)


def run(make_store: StoreFactory, body: Callable[[PrefixStore, Clock], Awaitable[Any]], *,
        limits: StoreLimits = LIMITS) -> Any:
    async def main() -> Any:
        clock = Clock()
        store = make_store(limits, clock)
        try:
            return await body(store, clock)
        finally:
            await store.close()
    return asyncio.run(main())


def make_spec(name: str, *, tokens: int = 100, ttl_s: float = 60.0,
              cache_salt: str | None = None, home: str | None = None,
              owner: str = "acme") -> PrefixSpec:
    messages = [{"role": "system", "content": f"You are {name}."}]
    return PrefixSpec(key=prefix_key("m", messages, cache_salt_of(owner, cache_salt)), model="m",
                      owner=owner, cache_salt=cache_salt,
                      messages_json=canonical_json(messages), prefix_tokens=tokens,
                      cacheable_tokens=tokens - tokens % 16, ttl_s=ttl_s, home=home)


def keys_of(records: list) -> list[PrefixKey]:
    return [r.key for r in records]


# --- keys -------------------------------------------------------------------------


def test_key_is_content_and_tenant_not_presentation() -> None:
    system = {"role": "system", "content": "Be brief."}
    key = prefix_key("m", [canonical_message(system)], None)
    assert is_prefix_key(key)
    # Text parts reach the engine joined with newlines: same prompt, same key.
    parts = {"role": "system", "content": [{"type": "text", "text": "Be"},
                                           {"type": "text", "text": "brief."}]}
    joined = {"role": "system", "content": "Be\nbrief."}
    assert (prefix_key("m", [canonical_message(parts)], None)
            == prefix_key("m", [canonical_message(joined)], None))
    # Field order and None-valued fields do not matter.
    shuffled = {"content": "Be brief.", "name": None, "role": "system"}
    assert prefix_key("m", [canonical_message(shuffled)], None) == key
    # Content, model, tenant and message boundaries do.
    others = [
        prefix_key("m", [canonical_message({"role": "system", "content": "Be brief!"})], None),
        prefix_key("m2", [canonical_message(system)], None),
        prefix_key("m", [canonical_message(system)], "acme"),
        prefix_key("m", [canonical_message(system)], ""),
        prefix_key("m", [canonical_message({"role": "user", "content": "Be brief."})], None),
    ]
    assert len({key, *others}) == 6


def test_is_prefix_key() -> None:
    assert is_prefix_key("a" * 64)
    assert not is_prefix_key("A" * 64)
    assert not is_prefix_key("a" * 63)
    assert not is_prefix_key("../" + "a" * 61)


# --- both stores ------------------------------------------------------------------


def test_put_get_list_and_messages(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        spec = make_spec("a", tokens=130, cache_salt="eu", home="r1")
        result = await store.put(spec)
        assert result.created and result.evicted == ()
        record = result.record
        assert (record.key, record.model, record.owner, record.cache_salt, record.home) == (
            spec.key, "m", "acme", "eu", "r1")
        assert (record.prefix_tokens, record.cacheable_tokens) == (130, 128)
        assert (record.created_at, record.expires_at, record.last_used_at) == (
            clock.now, clock.now + 60.0, clock.now)
        assert (record.hits, record.misses, record.ttl_s) == (0, 0, 60.0)
        assert await store.get(spec.key) == record
        assert await store.records() == [record]
        assert await store.messages(spec.key) == [{"role": "system", "content": "You are a."}]
        none = make_spec("b")
        assert await store.get(none.key) is None
        assert await store.messages(none.key) is None
        assert (await store.put(none)).record.cache_salt is None
    run(make_store, body)


def test_registering_again_refreshes_ttl_and_keeps_counters(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        spec = make_spec("a", home="r1")
        first = (await store.put(spec)).record
        await store.record_use(spec.key, hit=True)
        clock.advance(50)
        again = await store.put(make_spec("a", ttl_s=30.0))
        assert not again.created
        record = again.record
        assert (record.created_at, record.expires_at) == (first.created_at, clock.now + 30.0)
        assert (record.hits, record.home) == (1, "r1")  # no new home given: the old one stays
        assert len(await store.records()) == 1
    run(make_store, body)


def test_ttl_expiry(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        spec = make_spec("a", tokens=600, ttl_s=10.0)
        await store.put(spec)
        clock.advance(9.999)
        assert await store.get(spec.key) is not None
        clock.advance(0.001)  # expires_at itself is already past
        assert await store.get(spec.key) is None
        assert await store.messages(spec.key) is None
        assert await store.records() == []
        assert not await store.record_use(spec.key, hit=True)
        assert not await store.set_home(spec.key, "r1")
        assert not await store.claim_rewarm(spec.key, 5.0)
        assert not await store.delete(spec.key)
        # Its tokens left the budget with it: a 600-token newcomer evicts nothing.
        assert (await store.put(make_spec("b", tokens=600))).evicted == ()
    run(make_store, body)


def test_count_limit_evicts_least_recently_used(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        a, b, c, d, e = (make_spec(n) for n in "abcde")
        for spec in (a, b, c, d):
            await store.put(spec)
            clock.advance(1)
        assert await store.record_use(a.key, hit=True)  # a: most recent now
        clock.advance(1)
        assert await store.record_use(b.key, hit=False)  # a miss is a use too
        clock.advance(1)
        result = await store.put(e)
        assert result.evicted == (c.key,)
        assert keys_of(await store.records()) == [e.key, b.key, a.key, d.key]
    run(make_store, body)


def test_token_limit_evicts_as_many_as_needed_oldest_first(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        specs = [make_spec(n, tokens=300) for n in "abc"]
        for spec in specs:
            await store.put(spec)
            clock.advance(1)
        big = make_spec("big", tokens=900)
        result = await store.put(big)
        assert result.evicted == tuple(s.key for s in specs)
        assert keys_of(await store.records()) == [big.key]
        assert (await store.put(make_spec("d", tokens=100))).evicted == ()
    run(make_store, body)


def test_eviction_ties_go_to_the_smaller_key(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        specs = [make_spec(n) for n in "abcd"]
        for spec in specs:
            await store.put(spec)  # all at the same instant
        clock.advance(1)
        result = await store.put(make_spec("e"))
        assert result.evicted == (min(s.key for s in specs),)
    run(make_store, body)


def test_a_record_never_evicts_itself(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        await store.put(make_spec("a", tokens=1000))
        result = await store.put(make_spec("a", tokens=1000))
        assert result.evicted == () and not result.created
        with pytest.raises(ValueError, match="prefix_tokens"):
            await store.put(make_spec("b", tokens=1001))
    run(make_store, body)


def test_hits_misses_and_delete(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        spec = make_spec("a")
        await store.put(spec)
        clock.advance(5)
        for hit in (True, True, False):
            assert await store.record_use(spec.key, hit=hit)
        record = await store.get(spec.key)
        assert (record.hits, record.misses, record.last_used_at) == (2, 1, clock.now)
        assert await store.delete(spec.key)
        assert not await store.delete(spec.key)
        assert not await store.record_use(spec.key, hit=True)
        assert await store.records() == []
        # The deleted record's tokens are free again.
        assert (await store.put(make_spec("b", tokens=1000))).evicted == ()
    run(make_store, body)


def test_set_home_and_claim_rewarm(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        spec = make_spec("a")
        await store.put(spec)
        assert await store.set_home(spec.key, "r2")
        assert (await store.get(spec.key)).home == "r2"
        assert await store.set_home(spec.key, None)
        assert (await store.get(spec.key)).home is None
        assert await store.claim_rewarm(spec.key, 30.0)
        assert not await store.claim_rewarm(spec.key, 30.0)  # another instance: not yours
        clock.advance(30)
        assert await store.claim_rewarm(spec.key, 30.0)
        gone = make_spec("gone")
        assert not await store.set_home(gone.key, "r1")
        assert await store.get(gone.key) is None  # nothing was written for it
    run(make_store, body)


def test_concurrent_registrations_respect_the_limits(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        specs = [make_spec(f"p{i}", tokens=150) for i in range(20)]
        results = await asyncio.gather(*(store.put(s) for s in specs))
        evicted = [k for r in results for k in r.evicted]
        left = keys_of(await store.records())
        assert len(left) == 4 and len(evicted) == 16
        assert set(left) | set(evicted) == {s.key for s in specs}
        assert not set(left) & set(evicted)
    run(make_store, body)


def test_same_content_of_two_tenants_is_two_records(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        acme, globex = make_spec("a", owner="acme"), make_spec("a", owner="globex")
        assert acme.key != globex.key
        assert (await store.put(acme)).created
        assert (await store.put(globex)).created  # not a refresh of acme's
        assert {(r.key, r.owner) for r in await store.records()} == {
            (acme.key, "acme"), (globex.key, "globex")}
    run(make_store, body)


def test_a_tenant_over_its_own_quota_evicts_only_its_own(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        quota = OwnerQuota(max_prefixes=2)
        acme = make_spec("acme-a", owner="acme")
        await store.put(acme)  # acme's is the oldest record of all
        clock.advance(1)
        own = [make_spec(f"g{i}", owner="globex") for i in range(3)]
        results = []
        for spec in own:
            results.append(await store.put(spec, quota))
            clock.advance(1)
        assert [r.evicted for r in results] == [(), (), (own[0].key,)]
        assert set(keys_of(await store.records())) == {acme.key, own[1].key, own[2].key}
    run(make_store, body)


def test_a_tenant_token_quota_evicts_its_least_recently_used(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        quota = OwnerQuota(max_total_tokens=500)
        a, b = make_spec("a", tokens=200, owner="globex"), make_spec("b", tokens=200,
                                                                       owner="globex")
        other = make_spec("o", tokens=300, owner="acme")
        for spec in (a, other, b):
            await store.put(spec, quota)
            clock.advance(1)
        await store.record_use(a.key, hit=True)  # b is globex's least recently used now
        clock.advance(1)
        result = await store.put(make_spec("c", tokens=200, owner="globex"), quota)
        assert result.evicted == (b.key,)
    run(make_store, body)


def test_the_full_store_evicts_from_the_heaviest_tenant(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        # LIMITS: 4 records, 1000 tokens. acme holds one old 100-token prefix; globex
        # fills the rest and goes on registering: only globex's own records go,
        # though acme's is the least recently used of all.
        acme = make_spec("acme", owner="acme")
        await store.put(acme)
        clock.advance(1)
        for i in range(6):
            result = await store.put(make_spec(f"g{i}", tokens=200, owner="globex"))
            assert acme.key not in result.evicted
            clock.advance(1)
        records = await store.records()
        assert acme.key in keys_of(records) and len(records) == 4
        # A light tenant's registration evicts from the heaviest (globex), not from
        # acme, which holds less.
        globex = {r.key for r in records if r.owner == "globex"}
        result = await store.put(make_spec("acme2", owner="acme"))
        assert len(result.evicted) == 1 and set(result.evicted) <= globex
        assert acme.key in keys_of(await store.records())
    run(make_store, body)


def test_heaviest_is_counted_without_the_registration_itself(make_store: StoreFactory) -> None:
    async def body(store: PrefixStore, clock: Clock) -> None:
        # globex holds 300 in one record, acme 600 in two; acme's third (300) fills
        # the store: acme holds the most before it (600 > 300), so acme's oldest goes.
        g = make_spec("g", tokens=300, owner="globex")
        a1, a2 = make_spec("a1", tokens=300, owner="acme"), make_spec("a2", tokens=300,
                                                                       owner="acme")
        for spec in (g, a1, a2):
            await store.put(spec)
            clock.advance(1)
        result = await store.put(make_spec("a3", tokens=300, owner="acme"))
        assert result.evicted == (a1.key,)
        # And a registration of globex's now evicts from acme (600 before it), not globex.
        result = await store.put(make_spec("g2", tokens=300, owner="globex"))
        assert result.evicted == (a2.key,)
    run(make_store, body)


# --- Redis only -------------------------------------------------------------------


def test_redis_store_survives_a_restart_of_its_client(redis_url: str) -> None:
    from serving.prefixes.store_redis import RedisPrefixStore

    namespace = f"test-{uuid.uuid4().hex}"
    clock = Clock()

    async def first() -> PrefixKey:
        store = RedisPrefixStore.from_url(redis_url, LIMITS, clock=clock, namespace=namespace)
        spec = make_spec("a", home="r1")
        await store.put(spec)
        await store.record_use(spec.key, hit=True)
        await store.close()
        return spec.key

    async def second(key: PrefixKey) -> Any:
        store = RedisPrefixStore.from_url(redis_url, LIMITS, clock=clock, namespace=namespace)
        try:
            return await store.get(key), await store.messages(key)
        finally:
            await store.close()

    key = asyncio.run(first())
    record, messages = asyncio.run(second(key))
    assert (record.hits, record.home) == (1, "r1")
    assert messages == [{"role": "system", "content": "You are a."}]


def test_redis_store_unreachable_is_a_store_error(tmp_path: Path) -> None:
    from serving.prefixes.store_redis import RedisPrefixStore
    from tests.redis_server import _free_port

    async def main() -> None:
        store = RedisPrefixStore.from_url(f"redis://127.0.0.1:{_free_port()}/0", LIMITS)
        try:
            with pytest.raises(PrefixStoreError, match="Redis"):
                await store.records()
            with pytest.raises(PrefixStoreError):
                await store.get(make_spec("a").key)
        finally:
            await store.close()
    asyncio.run(main())


def test_deployments_sharing_a_redis_never_see_or_evict_each_other(redis_url: str) -> None:
    from serving.prefixes.store_redis import RedisPrefixStore, namespace_of

    run_id = uuid.uuid4().hex
    clock = Clock()
    one_ns = namespace_of(f"one-{run_id}", "LLMServer:m", ["m"])
    two_ns = namespace_of(f"two-{run_id}", "LLMServer:m", ["m"])
    other_model = namespace_of(f"one-{run_id}", "LLMServer:m", ["m2"])
    assert len({one_ns, two_ns, other_model}) == 3

    async def main() -> None:
        one = RedisPrefixStore.from_url(redis_url, LIMITS, clock=clock, namespace=one_ns)
        two = RedisPrefixStore.from_url(redis_url, LIMITS, clock=clock, namespace=two_ns)
        try:
            first = make_spec("a")
            await one.put(first)
            assert await two.get(first.key) is None
            assert (await two.put(first)).created  # the same key: not one's record
            clock.advance(1)
            evicted = [k for i in range(8)  # twice two's limit
                       for k in (await two.put(make_spec(f"b{i}"))).evicted]
            assert evicted[0] == first.key and len(evicted) == 5
            assert keys_of(await one.records()) == [first.key]
            assert len(await two.records()) == 4
        finally:
            await one.close()
            await two.close()
    asyncio.run(main())


def test_every_redis_key_expires_after_its_record(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from serving.prefixes.store_redis import REDIS_TTL_SLACK_S, RedisPrefixStore

    namespace = f"test-{uuid.uuid4().hex}"

    async def main() -> None:
        store = RedisPrefixStore.from_url(redis_url, LIMITS, clock=Clock(), namespace=namespace)
        client = aioredis.from_url(redis_url, decode_responses=True)
        try:
            await store.put(make_spec("short", ttl_s=60.0))
            await store.put(make_spec("long", ttl_s=600.0))
            keys = [k async for k in client.scan_iter(match=f"{{{namespace}}}:*")]
            assert len(keys) == 6  # lru, exp, tok, own and the two records
            ttls = {k: await client.ttl(k) for k in keys}
            short = next(k for k in keys if k.endswith(make_spec("short").key))
            assert 60 < ttls[short] <= 60 + REDIS_TTL_SLACK_S
            # Every other key lives as long as the longest record, plus the slack.
            for key in keys:
                if key != short:
                    assert 600 < ttls[key] <= 600 + REDIS_TTL_SLACK_S, (key, ttls[key])
        finally:
            await client.aclose()
            await store.close()
    asyncio.run(main())
