"""The `prefixes` section of the service config: the registry of prompt heads that
clients register to keep warm (/v1/prefixes).

Validation only; `serving/prefixes/` keeps, stores and prewarms the prefixes.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from serving.config_section import ConfigSection

# Read by the ingress process when `redis_url` is not set.
REDIS_URL_ENV = "CACHEROUTE_REDIS_URL"


class PrefixConfig(ConfigSection):
    """The prefix registry, /v1/prefixes (docs/prefixes.md)."""

    redis_url: str | None = None
    """Redis holding the prefix registry (`redis://host:6379/0`), shared by every ingress
    and kept across restarts. Null: the CACHEROUTE_REDIS_URL environment variable of the
    ingress process, else an in-process store (one ingress; lost on restart). Set it
    when more than one ingress runs or registrations must outlive a restart."""
    redis_namespace: str = Field("cacheroute", min_length=1, max_length=128,
                                 pattern=r"^[A-Za-z0-9_.:-]+$")
    """Names this deployment in Redis; its keys also carry the LLM deployment and model.
    Two deployments sharing one Redis must set different names: they then never see,
    count or evict each other's prefixes."""
    max_prefixes: int = Field(256, ge=1, le=100_000)
    """Registered prefixes kept; beyond it the tenant holding the most prefix tokens
    loses its least recently used one (`tenant_limits` bounds each tenant's own)."""
    max_total_tokens: int = Field(32_768, ge=1)
    """Tokens of all registered prefixes together (beyond it the tenant holding the most
    loses its least recently used): the KV cache the registry keeps warm. Keep it well
    below the fleet's KV cache, which the unregistered traffic needs too."""
    max_prefix_tokens: int = Field(4096, ge=1)
    """Largest single prefix in tokens (413 above it); also capped at
    `engine.max_model_len` - 1, since the prewarm generates one token."""
    default_ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False)
    """Lifetime of a prefix registered without `ttl_s`."""
    max_ttl_s: float = Field(604_800.0, gt=0, allow_inf_nan=False)
    """Longest `ttl_s` a client may ask for (a week), so a forgotten prefix still ages
    out."""
    rewarm_interval_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    """How often each ingress checks that some replica holds every registered prefix,
    and prewarms again one that lost its home (replica failure, scale-down, eviction).
    Lower it to recover sooner, at the cost of more checks."""

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> "PrefixConfig":
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("default_ttl_s must not exceed max_ttl_s")
        if self.max_prefix_tokens > self.max_total_tokens:
            raise ValueError("max_prefix_tokens must not exceed max_total_tokens")
        return self

    def resolved_redis_url(self) -> str | None:
        return self.redis_url or os.environ.get(REDIS_URL_ENV) or None
