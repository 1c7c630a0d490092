"""make_* builders for the prefix registry's unit tests.

The backend's routing side is the real routing core (``CacheAwarePolicy``): a prewarm
is routed and learned exactly as the Ray adapter does it, and placement/forget are the
policy's own. Only the engine is faked: tokens are one per character of the
canonical messages, and a prefill reports no cached tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from router import CacheAwarePolicy, Placement, PolicyConfig, RouteRequest
from serving.prefixes.metrics import PrefixMetrics
from serving.prefixes.registry import PrefixRegistry, Prewarmed, RegistrySettings
from serving.prefixes.store import InMemoryPrefixStore, PrefixStore, StoreLimits, canonical_json
from serving.tenants.config import TenantLimits
from serving.tenants.identity import Tenant

BLOCK_SIZE = 16
MODEL = "m"
# Two tenants with the service-wide limits.
OWNER = Tenant("acme", TenantLimits())
OTHER = Tenant("globex", TenantLimits())


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBackend:
    """A serving stack of one routing policy and an engine that only counts."""

    def __init__(self, policy: CacheAwarePolicy | None = None, *,
                 tracks_placement: bool = True) -> None:
        self.policy = policy or make_policy()
        self.tracks_placement = tracks_placement
        self.prewarms: list[tuple[str, list[dict[str, Any]], str | None]] = []
        self.tokenized = 0
        self.forgotten = 0

    async def token_ids(self, messages: Sequence[Mapping[str, Any]],
                        tenant: str | None) -> tuple[int, ...]:
        self.tokenized += 1
        return tuple(ord(c) for c in canonical_json(list(messages)))

    async def prewarm(self, model: str, messages: Sequence[Mapping[str, Any]],
                      tenant: str | None) -> Prewarmed:
        self.prewarms.append((model, [dict(m) for m in messages], tenant))
        ids = await self.token_ids(messages, tenant)
        self.tokenized -= 1
        self.policy.select(RouteRequest(token_ids=ids, cache_salt=tenant), {})
        return Prewarmed(prompt_tokens=len(ids), cached_tokens=0)

    def placement(self, token_ids: Sequence[int], tenant: str | None) -> Placement | None:
        return self.policy.placement(RouteRequest(token_ids=tuple(token_ids), cache_salt=tenant))

    def forget(self, token_ids: Sequence[int], tenant: str | None) -> int:
        self.forgotten += 1
        return self.policy.forget_prefix(RouteRequest(token_ids=tuple(token_ids),
                                                      cache_salt=tenant))


def make_policy(replicas: Sequence[str] = ("r0", "r1", "r2")) -> CacheAwarePolicy:
    # The bound alone: tests built on these fakes spill at a few requests in flight.
    return CacheAwarePolicy(PolicyConfig(block_size=BLOCK_SIZE, load_floor=0), replicas=replicas)


def make_settings(**overrides: Any) -> RegistrySettings:
    fields: dict[str, Any] = {
        "models": frozenset({MODEL}), "block_size": BLOCK_SIZE, "max_prefix_tokens": 400,
        "default_ttl_s": 60.0, "max_ttl_s": 3600.0, "rewarm_interval_s": 1.0,
        "rewarm_lease_s": 30.0,
    }
    fields.update(overrides)
    return RegistrySettings(**fields)


def make_store(clock: Clock | None = None, *, max_prefixes: int = 8,
               max_total_tokens: int = 2000) -> InMemoryPrefixStore:
    return InMemoryPrefixStore(StoreLimits(max_prefixes=max_prefixes,
                                           max_total_tokens=max_total_tokens),
                               clock=clock or Clock())


def make_registry(store: PrefixStore | None = None, backend: FakeBackend | None = None, *,
                  metrics: CollectorRegistry | None = None, **settings: Any) -> PrefixRegistry:
    return PrefixRegistry(store or make_store(), backend or FakeBackend(),
                          make_settings(**settings),
                          PrefixMetrics(metrics if metrics is not None else CollectorRegistry()))


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# 60 characters of instructions: 100+ fake tokens once wrapped in canonical JSON.
SYSTEM = system("You are the support assistant of Acme. Answer in one line.")
