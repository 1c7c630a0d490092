"""``PrefixStore`` in Redis: shared by every ingress and router instance, kept across restarts.

Layout (one hash tag, so a Redis Cluster keeps it in one slot and scripts may touch it
all). ``{ns}`` names the deployment and its model (``namespace_of``), so deployments
sharing one Redis never see, count or evict each other's records:

    {ns}:prefixes:lru      sorted set  key -> last used (wall-clock s): eviction order
    {ns}:prefixes:exp      sorted set  key -> expires at (s): TTL
    {ns}:prefixes:tok      sorted set  key -> prefix_tokens: the limits' sums
    {ns}:prefixes:own      hash        key -> owner (tenant name): the quotas' sums
    {ns}:prefixes:p:<key>  hash        the record's fields, messages included

Every change is one Lua script (atomic: no reader sees a half-registered prefix, two
ingresses registering at once cannot both squeeze under the limits). Each write script
first purges records whose expiry has passed, so the sets and the hashes never
disagree; reads filter by expiry themselves. Time comes from the caller's injected
clock, not Redis's, so both stores share one test suite; instances must share a wall
clock (NTP), which only shifts expiry by their skew. Redis expires every key on its
own too, ``REDIS_TTL_SLACK_S`` after the record it holds would expire (the index keys
after the longest-lived record), so a registry whose every ingress is gone leaves
nothing behind for long.
Cost: one round trip per call; a registration or a listing is O(n log n) over at most
``max_prefixes`` records, inside Redis.
"""

from __future__ import annotations

import json
import time
import math
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from serving.prefixes.store import (
    PrefixKey,
    PrefixRecord,
    PrefixSpec,
    OwnerQuota,
    PrefixStoreError,
    PutResult,
    StoreLimits,
    check_spec,
)

# Added to a record's own TTL for Redis's expiry of its keys: the purge above, on the
# callers' clock, always runs first unless their clocks are this far behind Redis's.
REDIS_TTL_SLACK_S = 300

# KEYS: lru, exp, tok, own. ARGV[1]: record key prefix, ARGV[2]: now.
_PRELUDE = """
local lru, exp, tok, own = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rec, now = ARGV[1], tonumber(ARGV[2])
local function drop(k)
  redis.call('DEL', rec .. k)
  redis.call('ZREM', lru, k)
  redis.call('ZREM', exp, k)
  redis.call('ZREM', tok, k)
  redis.call('HDEL', own, k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', ARGV[2])) do drop(k) end
local function live(k) return redis.call('ZSCORE', exp, k) ~= false end
"""

# ARGV[3..17]: key, ttl_s, expires_at, max_prefixes, max_total_tokens, model, cache_salt
# (JSON), messages_json, prefix_tokens, cacheable_tokens, home ('' keeps the old one),
# owner, the owner's max_prefixes and max_total_tokens, Redis TTL (s).
# The eviction is store.py's ``victims``, step for step.
# Returns {created, {evicted keys}, {record fields, flat}}.
_PUT = _PRELUDE + """
local key, owner = ARGV[3], ARGV[14]
local rk = rec .. key
local created = 0
if redis.call('EXISTS', rk) == 0 then
  created = 1
  redis.call('HSET', rk, 'created_at', ARGV[2], 'hits', 0, 'misses', 0, 'home', '',
             'rewarm_until', 0)
end
redis.call('HSET', rk, 'model', ARGV[8], 'cache_salt', ARGV[9], 'messages_json', ARGV[10],
           'prefix_tokens', ARGV[11], 'cacheable_tokens', ARGV[12], 'ttl_s', ARGV[4],
           'expires_at', ARGV[5], 'last_used_at', ARGV[2], 'owner', owner)
if ARGV[13] ~= '' then redis.call('HSET', rk, 'home', ARGV[13]) end
redis.call('ZADD', lru, ARGV[2], key)
redis.call('ZADD', exp, ARGV[5], key)
redis.call('ZADD', tok, ARGV[11], key)
redis.call('HSET', own, key, owner)
local redis_ttl = tonumber(ARGV[17])
redis.call('EXPIRE', rk, redis_ttl)
for _, k in ipairs({lru, exp, tok, own}) do
  if redis.call('TTL', k) < redis_ttl then redis.call('EXPIRE', k, redis_ttl) end
end
local new_t = tonumber(ARGV[11])
local max_n, max_t = tonumber(ARGV[6]), tonumber(ARGV[7])
local own_n, own_t = tonumber(ARGV[15]), tonumber(ARGV[16])
local count, tokens = {[owner] = 0}, {[owner] = 0}
local all_n, all_t = 0, 0
local order = {}
for _, k in ipairs(redis.call('ZRANGE', lru, 0, -1)) do
  local o = redis.call('HGET', own, k)
  local t = tonumber(redis.call('ZSCORE', tok, k))
  count[o] = (count[o] or 0) + 1
  tokens[o] = (tokens[o] or 0) + t
  all_n, all_t = all_n + 1, all_t + t
  if k ~= key then order[#order + 1] = {k, o, t} end
end
local evicted = {}
local function evict(i)
  local e = table.remove(order, i)
  drop(e[1])
  count[e[2]], tokens[e[2]] = count[e[2]] - 1, tokens[e[2]] - e[3]
  all_n, all_t = all_n - 1, all_t - e[3]
  evicted[#evicted + 1] = e[1]
end
local function oldest_of(o)
  for i = 1, #order do if order[i][2] == o then return i end end
  return nil
end
while count[owner] > own_n or tokens[owner] > own_t do
  local i = oldest_of(owner)
  if not i then break end
  evict(i)
end
while all_n > max_n or all_t > max_t do
  local best, best_t, best_n = nil, -1, -1
  for o, n in pairs(count) do
    local held_t, held_n = tokens[o], n
    if o == owner then held_t, held_n = held_t - new_t, held_n - 1 end
    if held_n > 0 and (held_t > best_t or (held_t == best_t and (held_n > best_n
        or (held_n == best_n and o < best)))) then
      best, best_t, best_n = o, held_t, held_n
    end
  end
  if not best then break end
  evict(oldest_of(best))
end
return {created, evicted, redis.call('HGETALL', rk)}
"""

# ARGV[3..]: the fields to return. Most recently used first, ties by key descending
# (the reverse of the eviction order, as the in-memory store lists).
_RECORDS = _PRELUDE + """
local out = {}
for _, k in ipairs(redis.call('ZREVRANGE', lru, 0, -1)) do
  out[#out + 1] = {k, redis.call('HMGET', rec .. k, unpack(ARGV, 3))}
end
return out
"""

_DELETE = _PRELUDE + """
if not live(ARGV[3]) then return 0 end
drop(ARGV[3])
return 1
"""

# ARGV[3]: key, ARGV[4]: 'hits' or 'misses'.
_USE = _PRELUDE + """
local key = ARGV[3]
if not live(key) then return 0 end
redis.call('HINCRBY', rec .. key, ARGV[4], 1)
redis.call('HSET', rec .. key, 'last_used_at', ARGV[2])
redis.call('ZADD', lru, ARGV[2], key)
return 1
"""

# ARGV[3]: key, ARGV[4]: home ('' for none).
_SET_HOME = _PRELUDE + """
if not live(ARGV[3]) then return 0 end
redis.call('HSET', rec .. ARGV[3], 'home', ARGV[4])
return 1
"""

# ARGV[3]: key, ARGV[4]: the lease's end.
_CLAIM = _PRELUDE + """
local key = ARGV[3]
if not live(key) then return 0 end
local until_s = tonumber(redis.call('HGET', rec .. key, 'rewarm_until') or '0')
if until_s > now then return 0 end
redis.call('HSET', rec .. key, 'rewarm_until', ARGV[4])
return 1
"""

_FIELDS = ("model", "owner", "cache_salt", "prefix_tokens", "cacheable_tokens", "ttl_s",
           "created_at", "expires_at", "last_used_at", "hits", "misses", "home", "rewarm_until")


def _record(key: str, fields: dict[str, Any]) -> PrefixRecord:
    return PrefixRecord(
        key=PrefixKey(key), model=fields["model"], owner=fields["owner"],
        cache_salt=json.loads(fields["cache_salt"]),
        prefix_tokens=int(fields["prefix_tokens"]),
        cacheable_tokens=int(fields["cacheable_tokens"]), ttl_s=float(fields["ttl_s"]),
        created_at=float(fields["created_at"]), expires_at=float(fields["expires_at"]),
        last_used_at=float(fields["last_used_at"]), hits=int(fields["hits"]),
        misses=int(fields["misses"]), home=fields["home"] or None,
        rewarm_until=float(fields["rewarm_until"]),
    )


def namespace_of(name: str, deployment: str, models: Iterable[str]) -> str:
    """The deployment's Redis namespace: the configured name, the LLM deployment and
    its models. Braces would break the hash tag, so they are replaced."""
    raw = "/".join((name, deployment, *sorted(models)))
    return raw.replace("{", "(").replace("}", ")")


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return dict(zip(flat[::2], flat[1::2]))


class RedisPrefixStore:
    def __init__(self, client: aioredis.Redis, limits: StoreLimits, *,
                 clock: Callable[[], float] = time.time, namespace: str = "cacheroute") -> None:
        # The client must decode responses (str, not bytes).
        self._client = client
        self._limits = limits
        self._clock = clock
        base = f"{{{namespace}}}:prefixes"
        self._keys = [f"{base}:lru", f"{base}:exp", f"{base}:tok", f"{base}:own"]
        self._record_prefix = f"{base}:p:"
        self._put = client.register_script(_PUT)
        self._records = client.register_script(_RECORDS)
        self._delete = client.register_script(_DELETE)
        self._use = client.register_script(_USE)
        self._set_home = client.register_script(_SET_HOME)
        self._claim = client.register_script(_CLAIM)

    @classmethod
    def from_url(cls, url: str, limits: StoreLimits, *,
                 clock: Callable[[], float] = time.time,
                 namespace: str = "cacheroute") -> RedisPrefixStore:
        # Short timeouts: the registry must fail fast (503) rather than hang a request.
        client = aioredis.from_url(url, decode_responses=True, socket_timeout=5.0,
                                   socket_connect_timeout=5.0, health_check_interval=30)
        return cls(client, limits, clock=clock, namespace=namespace)

    async def _run(self, script: Any, *args: Any) -> Any:
        try:
            return await script(keys=self._keys,
                                args=[self._record_prefix, repr(self._clock()), *args])
        except RedisError as err:
            raise PrefixStoreError(f"prefix store (Redis): {err}") from err

    async def put(self, spec: PrefixSpec, quota: OwnerQuota = OwnerQuota()) -> PutResult:
        check_spec(spec, self._limits)
        now = self._clock()
        own = quota.within(self._limits)
        created, evicted, flat = await self._run(
            self._put, spec.key, repr(spec.ttl_s), repr(now + spec.ttl_s),
            self._limits.max_prefixes, self._limits.max_total_tokens, spec.model,
            json.dumps(spec.cache_salt), spec.messages_json, spec.prefix_tokens,
            spec.cacheable_tokens, spec.home or "", spec.owner, own.max_prefixes,
            own.max_total_tokens, math.ceil(spec.ttl_s) + REDIS_TTL_SLACK_S)
        return PutResult(record=_record(spec.key, _pairs(flat)), created=bool(created),
                         evicted=tuple(PrefixKey(k) for k in evicted))

    async def _hash(self, key: PrefixKey, *fields: str) -> list[Any]:
        try:
            return await self._client.hmget(self._record_prefix + key, list(fields))
        except RedisError as err:
            raise PrefixStoreError(f"prefix store (Redis): {err}") from err

    async def get(self, key: PrefixKey) -> PrefixRecord | None:
        values = await self._hash(key, *_FIELDS)
        fields = dict(zip(_FIELDS, values))
        if fields["expires_at"] is None or float(fields["expires_at"]) <= self._clock():
            return None
        return _record(key, fields)

    async def messages(self, key: PrefixKey) -> list[dict[str, Any]] | None:
        expires_at, messages_json = await self._hash(key, "expires_at", "messages_json")
        if expires_at is None or float(expires_at) <= self._clock() or messages_json is None:
            return None
        return json.loads(messages_json)

    async def records(self) -> list[PrefixRecord]:
        rows = await self._run(self._records, *_FIELDS)
        return [_record(key, dict(zip(_FIELDS, values))) for key, values in rows]

    async def delete(self, key: PrefixKey) -> bool:
        return bool(await self._run(self._delete, key))

    async def record_use(self, key: PrefixKey, *, hit: bool) -> bool:
        return bool(await self._run(self._use, key, "hits" if hit else "misses"))

    async def set_home(self, key: PrefixKey, home: str | None) -> bool:
        return bool(await self._run(self._set_home, key, home or ""))

    async def claim_rewarm(self, key: PrefixKey, lease_s: float) -> bool:
        return bool(await self._run(self._claim, key, repr(self._clock() + lease_s)))

    async def close(self) -> None:
        await self._client.aclose()
