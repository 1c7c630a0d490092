"""Who a request belongs to: API key -> tenant, and the cache salt that keeps tenants
apart.

Every API key belongs to exactly one tenant: the keys of `server.tenants`, and the
flat `server.api_keys` (with `CACHEROUTE_API_KEYS`), which belong to the tenant named
`default`. A service with no key at all has one tenant, `anonymous`, that every caller
is part of (today's open service; `cacheroute serve` says so at start).

The salt. vLLM mixes a request's `cache_salt` into the hash of its first block, so
blocks under different salts never match (vLLM's prefix caching docs). The server sets
every request's salt from its tenant; a digest of a client's own `cache_salt` is appended, so it
can split its tenant's cache further but never reach another tenant's: two tenants'
salts differ in a fixed-length head the client does not control. The router hashes
with the same salt, so routing, `cached_tokens` and every cache keyed by the salt can
only reveal a tenant's own cache. The salt is never returned to a client.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.tenants.config import TenantLimits

if TYPE_CHECKING:
    from serving.config import ServiceConfig

ANONYMOUS = "anonymous"
DEFAULT = "default"
# Where the ASGI scope carries the request's tenant (`request.state.tenant`).
STATE_KEY = "tenant"


def tenant_salt(name: str) -> str:
    """The salt head of tenant `name`: fixed length, so no client suffix can turn one
    tenant's salt into another's."""
    return "t" + hashlib.sha256(b"cacheroute/tenant\0" + name.encode()).hexdigest()[:32]


def cache_salt_of(name: str, client_salt: str | None = None) -> str:
    """The salt tenant `name` is served under; `client_salt` narrows it. Stored
    records (prefixes, documents) keep the owner's name and the client's part only,
    and derive the salt with this."""
    head = tenant_salt(name)
    if not client_salt:
        return head
    # The client's part as a digest: a fixed length within vLLM's limit on a salt's
    # length and alphabet, whatever the client sent.
    return f"{head}-{hashlib.sha256(client_salt.encode()).hexdigest()[:32]}"


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: TenantLimits

    @property
    def salt(self) -> str:
        return tenant_salt(self.name)

    def cache_salt(self, client_salt: str | None = None) -> str:
        """The salt a request of this tenant is served under; `client_salt` narrows it."""
        return cache_salt_of(self.name, client_salt)


class Tenants:
    """Every tenant of the service and the keys that act for each."""

    def __init__(self, keys: dict[str, "Tenant"], *, anonymous: Tenant | None) -> None:
        self._keys = [(k.encode(), t) for k, t in keys.items()]
        self.anonymous = anonymous
        self.by_name = {t.name: t for _, t in self._keys}
        if anonymous is not None:
            self.by_name[anonymous.name] = anonymous

    @classmethod
    def from_config(cls, config: "ServiceConfig") -> "Tenants":
        defaults = config.tenant_limits
        keys: dict[str, Tenant] = {}
        flat = config.server.resolved_api_keys()
        if flat:
            tenant = Tenant(DEFAULT, defaults)
            keys.update(dict.fromkeys(flat, tenant))
        for name, spec in config.server.tenants.items():
            tenant = Tenant(name, defaults.over(spec.limits))
            for key in spec.resolved_api_keys():
                if key in keys and keys[key].name != name:
                    raise ValueError(f"an API key of tenant {name!r} also belongs to "
                                     f"tenant {keys[key].name!r}")
                keys[key] = tenant
        return cls(keys, anonymous=None if keys else Tenant(ANONYMOUS, defaults))

    @property
    def authenticated(self) -> bool:
        return self.anonymous is None

    def resolve(self, token: bytes) -> Tenant | None:
        """The tenant holding `token`, in time independent of which key matched."""
        found = None
        for key, tenant in self._keys:
            if hmac.compare_digest(token, key):
                found = tenant
        return found

    def describe(self) -> str:
        """One line for the start log: how many tenants, or that there is none."""
        if self.anonymous is not None:
            return ("no API keys configured: every caller is one anonymous tenant and "
                    "shares its cache, prefixes and documents (docs/security.md)")
        names = sorted({t.name for _, t in self._keys})
        return f"{len(names)} tenant(s) by API key: {', '.join(names)}"


def tenant_of(request: Any) -> Tenant:
    """The tenant the auth middleware found for this request (a Starlette `Request`)."""
    tenant = request.scope.get("state", {}).get(STATE_KEY)
    if tenant is None:
        raise LookupError("request has no tenant: is the tenant middleware installed?")
    return tenant
