"""The prefix registry: static prompt heads registered, prewarmed, counted and kept warm.

- ``register``: for a tenant (the record's owner), canonicalise the messages, check
  the limits (tokens counted with the engine's own tokenizer and chat template),
  prewarm -- one prefill-only chat request
  (``max_tokens=1``, no generation prompt) through the same handle and router as
  normal traffic, so the router sends it to the prefix's ring home and records that
  replica as the owner of its blocks -- then store it. The first real request then
  finds every full block of the prefix cached on the replica the router picks.
- ``match`` / ``observe``: which registered prefix a chat request starts with, and
  whether it hit. Matching hashes the request's first k messages for each registered
  length k (few distinct lengths: a handful of sha256 over the prefix text). A match
  only says the request *used* the prefix; whether it *hit* is read from the engine's
  own report, ``usage.prompt_tokens_details.cached_tokens`` >= the prefix's full-block
  tokens. That is truer than trusting the router's prediction: a replica that evicted
  the blocks, or a spill to a cold replica, counts as the miss it was. A streamed
  response without usage (no ``stream_options.include_usage``) is a use that is
  neither hit nor miss.
- ``sweep``, every ``rewarm_interval_s`` in each ingress: lists the store (prefixes
  registered through other ingresses become matchable; deleted, expired or evicted
  ones stop matching and the router forgets their blocks), and rewarms a prefix no
  replica holds any more (its home died, scaled away, or evicted it) -- one instance
  per prefix, claimed through the store. A holder other than the recorded home just
  updates the record.
- ``delete``: remove the key and make the router forget the prefix's blocks, so an
  updated system prompt (a new key) is placed afresh rather than following the old one.

Ownership: a prefix is served under its owner's cache salt (serving/tenants/identity.py)
and its key derives from that salt, so the same content registered by two tenants is
two records, each matched only by its own tenant's chat requests (whose salt the
ingress set). Listing and deleting are scoped to the owner: another tenant's key is
answered exactly as an unknown one. The owner's quota (``tenant_limits``) and the
store's limits decide evictions (serving/prefixes/store.py).

Costs: a registration tokenises once and prefills once; a chat request pays the
matching hashes above; a sweep is one store listing plus an index probe per prefix.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from router import Placement
from serving.prefixes.metrics import PrefixMetrics
from serving.prefixes.store import (
    OwnerQuota,
    PrefixKey,
    PrefixRecord,
    PrefixSpec,
    PrefixStore,
    PrefixStoreError,
    canonical_json,
    canonical_message,
    is_prefix_key,
    prefix_key,
    short_key,
)
from serving.tenants.identity import Tenant, cache_salt_of

logger = logging.getLogger("ray.serve")

# Characters per token no tokenizer exceeds on real text: a prefix longer than
# max_prefix_tokens x this is refused before it is tokenised (bounds the work a
# client can ask of the ingress).
_MAX_CHARS_PER_TOKEN = 64


class PrefixError(Exception):
    """A request the registry refuses; leaves as an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True, kw_only=True)
class Prewarmed:
    """The engine's report on a prefill-only request."""

    prompt_tokens: int
    cached_tokens: int


class PrefixBackend(Protocol):
    """What the registry needs from the serving stack (``prefix_backend.py``)."""

    # False when the routing policy keeps no ownership index (pow2, ray-prefix, random):
    # then nothing is known of homes and nothing is rewarmed.
    tracks_placement: bool

    # ``salt`` below is always the owner's server-derived cache salt.

    async def token_ids(self, messages: Sequence[Mapping[str, Any]],
                        salt: str | None) -> tuple[int, ...]:
        """The prefix's prompt tokens, exactly as the engine will see them."""

    async def prewarm(self, model: str, messages: Sequence[Mapping[str, Any]],
                      salt: str | None) -> Prewarmed:
        """Prefill the prefix through the router, as normal traffic is sent."""

    def placement(self, token_ids: Sequence[int], salt: str | None) -> Placement | None:
        """Where the router believes the prefix lives; None if it cannot tell yet."""

    def forget(self, token_ids: Sequence[int], salt: str | None) -> int:
        """Make the router forget who holds the prefix's blocks."""


@dataclass(frozen=True, kw_only=True)
class RegistrySettings:
    models: frozenset[str]
    block_size: int
    max_prefix_tokens: int
    default_ttl_s: float
    max_ttl_s: float
    rewarm_interval_s: float
    # How long another instance waits before retrying a rewarm someone claimed.
    rewarm_lease_s: float = 120.0


@dataclass(frozen=True, kw_only=True)
class PrefixUse:
    """A chat request that starts with a registered prefix."""

    key: PrefixKey
    cacheable_tokens: int


@dataclass(frozen=True, kw_only=True)
class _Known:
    """What matching needs of a registered prefix, kept per ingress."""

    key: PrefixKey
    model: str
    salt: str
    message_count: int
    cacheable_tokens: int


def canonical_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    return [canonical_message(m) for m in messages]


def salt_of(record: PrefixRecord) -> str:
    """The cache salt the prefix is served under: its owner's, narrowed by the client's."""
    return cache_salt_of(record.owner, record.cache_salt)


def quota_of(owner: Tenant) -> OwnerQuota:
    return OwnerQuota(max_prefixes=owner.limits.max_prefixes,
                      max_total_tokens=owner.limits.max_prefix_total_tokens)


class PrefixRegistry:
    def __init__(self, store: PrefixStore, backend: PrefixBackend, settings: RegistrySettings,
                 metrics: PrefixMetrics) -> None:
        self._store = store
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._known: dict[PrefixKey, _Known] = {}
        # Prompt token ids of known prefixes, tokenised once per process.
        self._token_ids: dict[PrefixKey, tuple[int, ...]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Fire-and-forget store updates; held so the loop does not drop them.
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def settings(self) -> RegistrySettings:
        return self._settings

    @property
    def backend(self) -> PrefixBackend:
        """The stack it prewarms through (the document service asks it for placements)."""
        return self._backend

    # --- API --------------------------------------------------------------------

    async def register(self, *, model: str, messages: Sequence[Any], ttl_s: float | None,
                       owner: Tenant, cache_salt: str | None = None,
                       ) -> tuple[PrefixRecord, bool]:
        """Register (or refresh) a prefix of tenant ``owner``, served under its salt
        narrowed by the client's ``cache_salt``; returns its record and whether it
        is new."""
        s = self._settings
        if model not in s.models:
            raise PrefixError(404, f'Could not find model "{model}".', code="model_not_found",
                              param="model")
        ttl = s.default_ttl_s if ttl_s is None else ttl_s
        if not (0 < ttl <= s.max_ttl_s) or math.isnan(ttl):
            raise PrefixError(400, f"ttl_s must be > 0 and at most {s.max_ttl_s:g} seconds, "
                              f"got {ttl_s}.", code="invalid_request", param="ttl_s")
        canonical = canonical_messages(messages)
        if not canonical:
            raise PrefixError(400, "messages must hold at least one message.",
                              code="invalid_request", param="messages")
        text = canonical_json(canonical)
        if len(text) > s.max_prefix_tokens * _MAX_CHARS_PER_TOKEN:
            raise self._too_large(f"{len(text)} characters")
        salt = owner.cache_salt(cache_salt)
        key = prefix_key(model, canonical, salt)
        token_ids = await self._backend.token_ids(canonical, salt)
        if len(token_ids) > s.max_prefix_tokens:
            raise self._too_large(f"{len(token_ids)} tokens")
        cacheable = len(token_ids) - len(token_ids) % s.block_size
        if cacheable == 0:
            raise PrefixError(400, f"The prefix is {len(token_ids)} tokens, shorter than one "
                              f"KV block ({s.block_size} tokens): none of it can be cached.",
                              code="invalid_request", param="messages")
        warmed = await self._backend.prewarm(model, canonical, salt)
        if warmed.prompt_tokens != len(token_ids):
            logger.warning("cacheroute: prefix %s: the engine counted %d prompt tokens, the "
                           "ingress %d; hits are judged by the ingress's count",
                           short_key(key), warmed.prompt_tokens, len(token_ids))
        home = self._home(token_ids, salt)
        result = await self._call_store(self._store.put(PrefixSpec(
            key=key, model=model, owner=owner.name, cache_salt=cache_salt, messages_json=text,
            prefix_tokens=len(token_ids), cacheable_tokens=cacheable, ttl_s=ttl, home=home),
            quota_of(owner)))
        self._token_ids[key] = token_ids
        self._remember(result.record, len(canonical))
        # It was just warmed: other ingresses, whose routers learn the holder from the
        # engine's KV events a moment later, must not take it for lost and rewarm it.
        await self._call_store(self._store.claim_rewarm(key, 2 * s.rewarm_interval_s))
        for gone in result.evicted:
            self._forget_local(gone)
            logger.info("cacheroute: prefix %s evicted (registry limits)", short_key(gone))
        logger.info("cacheroute: prefix %s %s: %d tokens, home %s, ttl %gs", short_key(key),
                    "registered" if result.created else "refreshed", len(token_ids), home, ttl)
        return result.record, result.created

    async def records(self, owner: str) -> list[PrefixRecord]:
        """The prefixes of tenant ``owner``, most recently used first."""
        return [r for r in await self._call_store(self._store.records()) if r.owner == owner]

    async def delete(self, key: str, owner: str) -> None:
        """Delete tenant ``owner``'s prefix ``key``; another tenant's is unknown (404),
        in the same words, so a key cannot be probed."""
        if not is_prefix_key(key):
            raise self._unknown(key)
        pkey = PrefixKey(key)
        record = await self._call_store(self._store.get(pkey))
        if record is None or record.owner != owner:
            raise self._unknown(key)
        # Registered through another ingress: tokenise it here, so the router of this
        # process can forget it too.
        await self._call_store(self._learn(record))
        if not await self._call_store(self._store.delete(pkey)):
            raise self._unknown(key)
        self._forget_local(pkey)
        logger.info("cacheroute: prefix %s deleted", short_key(pkey))

    # --- traffic ----------------------------------------------------------------

    def match(self, model: str | None, messages: Sequence[Any] | None,
              cache_salt: str | None) -> PrefixUse | None:
        """The longest registered prefix the request's messages start with, under the
        request's (server-set) ``cache_salt``: a key includes its owner's salt, so
        only the tenant's own prefixes can match."""
        if not self._known or not messages:
            return None
        if model is None and len(self._settings.models) == 1:
            model = next(iter(self._settings.models))
        lengths = sorted({k.message_count for k in self._known.values()
                          if k.message_count <= len(messages)}, reverse=True)
        if not lengths:
            return None
        try:
            head = canonical_messages(messages[:lengths[0]])
        except (TypeError, ValueError):  # a message shape the registry never stores
            return None
        for count in lengths:
            known = self._known.get(prefix_key(model or "", head[:count], cache_salt))
            if known is not None:
                return PrefixUse(key=known.key, cacheable_tokens=known.cacheable_tokens)
        return None

    def observe(self, use: PrefixUse, cached_tokens: int | None) -> None:
        """Count one request that used a prefix; ``cached_tokens`` from its usage."""
        label = short_key(use.key)
        if cached_tokens is None:
            logger.info("cacheroute: prefix %s used; no usage reported, so neither hit nor "
                        "miss", label)
            return
        hit = cached_tokens >= use.cacheable_tokens
        (self._metrics.hits if hit else self._metrics.misses).inc()
        logger.info("cacheroute: prefix %s %s (%d of its %d block tokens cached)", label,
                    "hit" if hit else "miss", min(cached_tokens, use.cacheable_tokens),
                    use.cacheable_tokens)
        self._background(self._store.record_use(use.key, hit=hit))

    # --- keeping warm -----------------------------------------------------------

    def ensure_sweeping(self) -> None:
        """Start the periodic sweep on the running loop (idempotent)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except PrefixStoreError as err:  # Redis away: say so, without a traceback
                logger.warning("cacheroute: prefix sweep skipped: %s", err)
            except Exception:  # an engine hiccup must not end the loop
                logger.exception("cacheroute: prefix sweep failed")
            await asyncio.sleep(self._settings.rewarm_interval_s)

    async def sweep(self) -> int:
        """One pass; returns how many prefixes this instance rewarmed."""
        records = await self._store.records()
        self._metrics.registered.set(len(records))
        live = {r.key for r in records}
        for key in [k for k in self._known if k not in live]:
            self._forget_local(key)
        rewarmed = 0
        for record in records:
            try:
                if not await self._learn(record):
                    continue  # deleted since the listing
                if self._backend.tracks_placement:
                    rewarmed += await self._keep_warm(record, self._token_ids[record.key])
            except Exception:  # one prefix's failure must not starve the others
                logger.exception("cacheroute: prefix %s: sweep failed", short_key(record.key))
        return rewarmed

    async def _keep_warm(self, record: PrefixRecord, token_ids: tuple[int, ...]) -> int:
        salt = salt_of(record)
        placement = self._backend.placement(token_ids, salt)
        if placement is not None and placement.holders:
            if record.home not in placement.holders:
                await self._store.set_home(record.key, placement.home)
            return 0
        # Nobody holds it (or this process's router has not started yet: the prewarm
        # starts it). One instance rewarms; the others see the holder next sweep.
        if not await self._store.claim_rewarm(record.key, self._settings.rewarm_lease_s):
            return 0
        messages = await self._store.messages(record.key)
        if messages is None:  # deleted meanwhile
            return 0
        await self._backend.prewarm(record.model, messages, salt)
        home = self._home(token_ids, salt)
        await self._store.set_home(record.key, home)
        self._metrics.rewarms.inc()
        logger.info("cacheroute: prefix %s rewarmed on %s (was %s)", short_key(record.key),
                    home, record.home)
        return 1

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._pending):
            task.cancel()
        await self._store.close()

    # --- internals --------------------------------------------------------------

    async def _learn(self, record: PrefixRecord) -> bool:
        """Make a stored prefix known to this ingress (matching, token ids); False if
        it is gone."""
        if record.key in self._known and record.key in self._token_ids:
            return True
        messages = await self._store.messages(record.key)
        if messages is None:
            return False
        if record.key not in self._token_ids:
            self._token_ids[record.key] = await self._backend.token_ids(messages,
                                                                        salt_of(record))
        self._remember(record, len(messages))
        return True

    def _home(self, token_ids: Sequence[int], salt: str) -> str | None:
        if not self._backend.tracks_placement:
            return None
        placement = self._backend.placement(token_ids, salt)
        return placement.home if placement is not None else None

    def _remember(self, record: PrefixRecord, message_count: int) -> None:
        if message_count:
            self._known[record.key] = _Known(
                key=record.key, model=record.model, salt=salt_of(record),
                message_count=message_count, cacheable_tokens=record.cacheable_tokens)

    def _forget_local(self, key: PrefixKey) -> None:
        """The prefix left the registry: stop matching it and let the router forget
        its blocks."""
        known = self._known.pop(key, None)
        token_ids = self._token_ids.pop(key, None)
        if token_ids is not None and known is not None:
            self._backend.forget(token_ids, known.salt)

    def _background(self, coro: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a stream finalised outside the loop: the count is lost
            coro.close()
            return
        task = loop.create_task(self._quietly(coro))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _quietly(coro: Any) -> None:
        try:
            await coro
        except PrefixStoreError as err:
            logger.warning("cacheroute: prefix counters not updated: %s", err)

    @staticmethod
    async def _call_store(coro: Any) -> Any:
        try:
            return await coro
        except PrefixStoreError as err:
            raise PrefixError(503, f"The prefix registry is unavailable: {err}",
                              code="service_unavailable") from err

    def _too_large(self, size: str) -> PrefixError:
        return PrefixError(413, f"The prefix is {size}; the limit is "
                           f"{self._settings.max_prefix_tokens} tokens.",
                           code="request_too_large", param="messages")

    @staticmethod
    def _unknown(key: str) -> PrefixError:
        return PrefixError(404, f"No registered prefix has key '{key[:80]}'.",
                           code="not_found", param="key")
