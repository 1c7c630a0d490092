"""Registered prefixes: their keys, their records, and where the records live.

A prefix is the static head of many chat requests (system prompt, few-shot turns).
Its key is derived, never chosen: sha256 over the canonical JSON of
``(model, messages, cache salt)``, the salt being the owning tenant's server-derived
one (serving/tenants/identity.py), so the same content registered by two tenants is
two records, a client can neither name another tenant's prefix nor point a key at
other content, and an edited system prompt is a new key.

``PrefixStore`` is the registry's state, behind one small async interface with two
implementations of identical semantics (one test suite runs against both):

- ``InMemoryPrefixStore`` here: one process, lost on restart;
- ``RedisPrefixStore`` (``store_redis.py``): every ingress and router instance
  shares it and a restart loses nothing; each update is one Lua script, so atomic.

Semantics, for both:
- a record expires ``ttl_s`` after it was (last) registered; expired records are
  invisible at once and purged on the next write;
- every record has an owner (a tenant name). A registration first keeps its owner
  within the owner's own quota (``OwnerQuota``: its records and tokens), evicting
  the owner's least recently *used* records (a hit or a miss is a use: both mean
  traffic still wants the prefix); then, while the store is over its own
  ``max_prefixes`` or ``max_total_tokens``, the owner holding the most tokens (not
  counting the registration being admitted; ties: more records, then the smaller
  name) loses its least recently used record. So one tenant's registrations evict
  its own prefixes, and other tenants' only while those hold more than it does.
  The registration itself is never evicted; ties between records go to the smaller
  key;
- hits and misses are counters on the record; registering the same content again
  refreshes its TTL and keeps its counters.
The clock is injected (wall-clock seconds, shared by every instance), so expiry and
eviction are tested without sleeping. Cost: O(n) in the records for an eviction or a
listing; n is bounded by ``max_prefixes`` (hundreds).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NewType, Protocol

# Lowercase sha256 hex of the canonical key document.
PrefixKey = NewType("PrefixKey", str)

# Part of every hashed key document. Changing it (or how messages are normalised)
# changes every key: registered prefixes then stop matching and must be registered again.
KEY_SCHEME = "cacheroute-prefix-v1"

_KEY_RE = re.compile(r"[0-9a-f]{64}")


class PrefixStoreError(RuntimeError):
    """The store cannot be reached or answered nonsense (Redis down, timeout)."""


def _text_of(content: Any) -> Any:
    # A list of text parts reaches the engine joined with newlines (vLLM, and
    # serving/routing/prompt_tokens.py): the same prompt, so the same key. Other parts
    # (images) are kept as they are, so such a message never matches a text prefix.
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type", "text") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return content


def canonical_message(message: Any) -> dict[str, Any]:
    """A chat message as the engine sees it: fields that are None dropped, text parts joined."""
    if hasattr(message, "model_dump"):
        message = message.model_dump(exclude_none=True)
    out = {k: v for k, v in dict(message).items() if v is not None}
    if "content" in out:
        out["content"] = _text_of(out["content"])
    return out


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prefix_key(model: str, messages: Sequence[Mapping[str, Any]],
               cache_salt: str | None) -> PrefixKey:
    """The key of already canonical ``messages`` (``canonical_message``) under the
    server-derived ``cache_salt`` the prefix is served with."""
    document = canonical_json({"scheme": KEY_SCHEME, "model": model, "tenant": cache_salt,
                               "messages": list(messages)})
    return PrefixKey(hashlib.sha256(document.encode()).hexdigest())


def is_prefix_key(text: str) -> bool:
    return _KEY_RE.fullmatch(text) is not None


def short_key(key: PrefixKey) -> str:
    """The first 12 hex digits: log lines (48 bits, no collision among a few hundred
    registered prefixes). Never a metric label: /metrics is public."""
    return key[:12]


@dataclass(frozen=True, kw_only=True)
class StoreLimits:
    max_prefixes: int
    max_total_tokens: int

    def __post_init__(self) -> None:
        if self.max_prefixes < 1 or self.max_total_tokens < 1:
            raise ValueError(f"store limits must be >= 1, got {self}")


@dataclass(frozen=True, kw_only=True)
class OwnerQuota:
    """What one owner may hold; None leaves a bound to the store's own."""

    max_prefixes: int | None = None
    max_total_tokens: int | None = None

    def within(self, limits: StoreLimits) -> StoreLimits:
        return StoreLimits(
            max_prefixes=min(self.max_prefixes or limits.max_prefixes, limits.max_prefixes),
            max_total_tokens=min(self.max_total_tokens or limits.max_total_tokens,
                                 limits.max_total_tokens))


@dataclass(frozen=True, kw_only=True)
class PrefixSpec:
    """What a registration stores; the store adds times and counters."""

    key: PrefixKey
    model: str
    # The tenant that registered it: the only one that lists, matches or deletes it.
    owner: str
    # The client's own narrowing of its tenant's salt (serving/tenants/identity.py).
    cache_salt: str | None
    # Canonical JSON of the canonical messages: what a rewarm sends again.
    messages_json: str
    prefix_tokens: int
    # Tokens of the prefix's full KV blocks: all a later request can find cached.
    cacheable_tokens: int
    ttl_s: float
    home: str | None = None


@dataclass(frozen=True, kw_only=True)
class PrefixRecord:
    """A registered prefix as listed; its messages are fetched apart (``messages``),
    since only a rewarm needs them and they are most of a record's bytes."""

    key: PrefixKey
    model: str
    owner: str
    cache_salt: str | None
    prefix_tokens: int
    cacheable_tokens: int
    ttl_s: float
    created_at: float
    expires_at: float
    last_used_at: float
    hits: int = 0
    misses: int = 0
    # Replica that held the prefix when last checked (None: unknown or nobody).
    home: str | None = None
    # A rewarm claimed by some instance runs until then (see ``claim_rewarm``).
    rewarm_until: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PutResult:
    record: PrefixRecord
    created: bool
    # Records removed to make room, least recently used first.
    evicted: tuple[PrefixKey, ...] = ()


class PrefixStore(Protocol):
    """The registry's state; every method is one atomic step."""

    async def put(self, spec: PrefixSpec, quota: OwnerQuota = OwnerQuota()) -> PutResult:
        """Register (or refresh) a prefix, evicting others to fit the owner's
        ``quota`` and the store's limits."""

    async def get(self, key: PrefixKey) -> PrefixRecord | None: ...

    async def messages(self, key: PrefixKey) -> list[dict[str, Any]] | None:
        """The prefix's canonical messages (what a rewarm sends again)."""

    async def records(self) -> list[PrefixRecord]:
        """Live records, most recently used first."""

    async def delete(self, key: PrefixKey) -> bool:
        """Remove a record; False if there was none."""

    async def record_use(self, key: PrefixKey, *, hit: bool) -> bool:
        """Count a hit or a miss and mark the record used; False if there is none."""

    async def set_home(self, key: PrefixKey, home: str | None) -> bool:
        """Record where the prefix lives; False (and nothing written) if it is gone."""

    async def claim_rewarm(self, key: PrefixKey, lease_s: float) -> bool:
        """True for exactly one caller per ``lease_s``: the instance that rewarms."""

    async def close(self) -> None: ...


def check_spec(spec: PrefixSpec, limits: StoreLimits) -> None:
    if not is_prefix_key(spec.key):
        raise ValueError(f"not a prefix key: {spec.key!r}")
    if not 0 < spec.prefix_tokens <= limits.max_total_tokens:
        raise ValueError(f"prefix_tokens must be in 1..{limits.max_total_tokens}, "
                         f"got {spec.prefix_tokens}")
    if not 0 < spec.ttl_s < float("inf"):
        raise ValueError(f"ttl_s must be finite and > 0, got {spec.ttl_s}")


def eviction_order(records: Iterable[PrefixRecord]) -> list[PrefixRecord]:
    """Least recently used first, ties by key: the order both stores evict in."""
    return sorted(records, key=lambda r: (r.last_used_at, r.key))


def victims(records: Iterable[PrefixRecord], new: PrefixRecord, limits: StoreLimits,
            quota: OwnerQuota) -> list[PrefixKey]:
    """What admitting ``new`` (already among ``records``) evicts, in order: the owner's
    own least recently used over its quota, then the heaviest owner's while the store
    is over its limits (module docstring). store_redis.py's Lua does the same."""
    own = quota.within(limits)
    order = [r for r in eviction_order(records) if r.key != new.key]
    count: dict[str, int] = {new.owner: 1}
    tokens: dict[str, int] = {new.owner: new.prefix_tokens}
    for r in order:
        count[r.owner] = count.get(r.owner, 0) + 1
        tokens[r.owner] = tokens.get(r.owner, 0) + r.prefix_tokens
    out: list[PrefixKey] = []

    def evict(victim: PrefixRecord) -> None:
        order.remove(victim)
        count[victim.owner] -= 1
        tokens[victim.owner] -= victim.prefix_tokens
        out.append(victim.key)

    for r in [r for r in order if r.owner == new.owner]:
        if count[new.owner] <= own.max_prefixes and tokens[new.owner] <= own.max_total_tokens:
            break
        evict(r)
    while (sum(count.values()) > limits.max_prefixes
           or sum(tokens.values()) > limits.max_total_tokens):
        # Holdings without the registration: check_spec lets it alone always fit.
        held = {o: (tokens[o] - (new.prefix_tokens if o == new.owner else 0),
                    count[o] - (o == new.owner)) for o in count}
        heaviest = min((o for o in held if held[o][1] > 0),
                       key=lambda o: (-held[o][0], -held[o][1], o))
        evict(next(r for r in order if r.owner == heaviest))
    return out


class InMemoryPrefixStore:
    """``PrefixStore`` in one process. Thread-safe; never blocks the event loop."""

    def __init__(self, limits: StoreLimits, *, clock: Callable[[], float] = time.time) -> None:
        self._limits = limits
        self._clock = clock
        self._records: dict[PrefixKey, PrefixRecord] = {}
        self._messages: dict[PrefixKey, str] = {}
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        for key in [k for k, r in self._records.items() if r.expires_at <= now]:
            self._remove(key)

    def _remove(self, key: PrefixKey) -> bool:
        self._messages.pop(key, None)
        return self._records.pop(key, None) is not None

    def _live(self, key: PrefixKey, now: float) -> PrefixRecord | None:
        record = self._records.get(key)
        return record if record is not None and record.expires_at > now else None

    async def put(self, spec: PrefixSpec, quota: OwnerQuota = OwnerQuota()) -> PutResult:
        check_spec(spec, self._limits)
        with self._lock:
            now = self._clock()
            self._purge(now)
            old = self._records.get(spec.key)
            record = PrefixRecord(
                key=spec.key, model=spec.model, owner=spec.owner, cache_salt=spec.cache_salt,
                prefix_tokens=spec.prefix_tokens,
                cacheable_tokens=spec.cacheable_tokens, ttl_s=spec.ttl_s,
                created_at=old.created_at if old else now, expires_at=now + spec.ttl_s,
                last_used_at=now, hits=old.hits if old else 0, misses=old.misses if old else 0,
                home=spec.home if spec.home is not None else (old.home if old else None),
                rewarm_until=old.rewarm_until if old else 0.0,
            )
            self._records[spec.key] = record
            self._messages[spec.key] = spec.messages_json
            evicted = victims(self._records.values(), record, self._limits, quota)
            for key in evicted:
                self._remove(key)
            return PutResult(record=record, created=old is None, evicted=tuple(evicted))

    async def get(self, key: PrefixKey) -> PrefixRecord | None:
        with self._lock:
            return self._live(key, self._clock())

    async def messages(self, key: PrefixKey) -> list[dict[str, Any]] | None:
        with self._lock:
            if self._live(key, self._clock()) is None:
                return None
            return json.loads(self._messages[key])

    async def records(self) -> list[PrefixRecord]:
        with self._lock:
            now = self._clock()
            live = [r for r in self._records.values() if r.expires_at > now]
        return eviction_order(live)[::-1]

    async def delete(self, key: PrefixKey) -> bool:
        with self._lock:
            now = self._clock()
            self._purge(now)
            return self._remove(key)

    async def record_use(self, key: PrefixKey, *, hit: bool) -> bool:
        with self._lock:
            now = self._clock()
            record = self._live(key, now)
            if record is None:
                return False
            self._records[key] = replace(record, last_used_at=now,
                                         hits=record.hits + hit, misses=record.misses + (not hit))
            return True

    async def set_home(self, key: PrefixKey, home: str | None) -> bool:
        with self._lock:
            record = self._live(key, self._clock())
            if record is None:
                return False
            self._records[key] = replace(record, home=home)
            return True

    async def claim_rewarm(self, key: PrefixKey, lease_s: float) -> bool:
        with self._lock:
            now = self._clock()
            record = self._live(key, now)
            if record is None or record.rewarm_until > now:
                return False
            self._records[key] = replace(record, rewarm_until=now + lease_s)
            return True

    async def close(self) -> None:
        return None
