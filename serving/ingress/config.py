"""The `server` section of the service config: the HTTP front end (address, API keys,
request limits) and the local Ray head that `cacheroute serve` starts.

Validation only; `serving/ingress/` enforces the limits and `serving/runtime.py`
starts Ray and Serve with the rest.
"""

from __future__ import annotations

import os
import re

from pydantic import Field, field_validator

from serving.config_section import ConfigSection
from serving.tenants.config import TENANT_NAME_PATTERN, TenantConfig, plain_keys, resolve_keys


class ServerConfig(ConfigSection):
    """The HTTP front end and, for local runs, the Ray head (docs/api.md)."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy binds; `0.0.0.0` accepts remote clients, which should then
    need an API key (docs/security.md)."""
    port: int = Field(8000, ge=1, le=65535)
    """Port of the OpenAI API and of /ready and /health."""
    api_keys: tuple[str, ...] = ()
    """Bearer tokens of the tenant named `default`. With no key here, in
    `api_keys_env` or in `tenants`, there is no authentication and every caller is one
    anonymous tenant. Prefer `api_keys_env`, which keeps the keys out of the file."""
    api_keys_env: str | None = "CACHEROUTE_API_KEYS"
    """Environment variable holding comma-separated keys of the `default` tenant (added
    to `api_keys`); null reads none."""
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    """Tenants by name, each with its own API keys: a tenant sees and evicts only its
    own cache, prefixes and documents (docs/security.md)."""
    max_concurrent_requests: int = Field(256, ge=1)
    """Requests one ingress replica holds at once, every tenant together, each from
    before its body is read until its response's last byte (503 `server_overloaded`,
    `Retry-After: 1`, above it): bounds the ingress's memory, since each may buffer a
    body of up to `max_body_bytes`. Also each tenant's cap unless
    `tenant_limits.max_concurrent_requests` sets a smaller one."""
    metrics_token_env: str | None = None
    """Environment variable holding a bearer token that GET /metrics then requires (no
    tenant's key opens it): for a cluster whose API port is public and whose Prometheus
    sends the token. Null: /metrics needs no key, like /ready; it carries no tenant
    name and no content hash (docs/security.md)."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Port of Ray's Prometheus export (/metrics): engine metrics per replica (`ReplicaId`
    label) and Serve's own. Null picks a free port, printed in the ready line; set it
    when a Prometheus scrapes this host (docs/operations/metrics.md)."""
    ready_timeout_s: float = Field(1200.0, gt=0)
    """How long `cacheroute serve` waits for every replica's warm-up before giving up.
    Raise it for a large model, or one downloaded on first start."""
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=1024 ** 3)
    """Largest request body accepted (413 above it), checked before the body is parsed.
    The default holds a long-context prompt as text or as token ids with room to spare;
    raise it with `engine.max_model_len`."""
    max_json_depth: int = Field(64, ge=8, le=256)
    """Deepest nesting of arrays and objects in a JSON body (400 above it). Real requests,
    a JSON schema in `response_format` included, nest far less; much deeper bodies
    overflow the recursion of the code that forwards a request to a replica, so there
    is rarely a reason to change it."""
    ray_num_cpus: int | None = Field(None, ge=1)
    """Logical CPUs of a local Ray head. Null: enough for every replica (by
    `engine.cpus_per_replica`) plus the ingress, so small machines still place them all.
    Set it when Ray should see another number."""

    _keys_nonempty = field_validator("api_keys")(plain_keys)

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantConfig]) -> dict[str, TenantConfig]:
        for name in value:
            if not re.match(TENANT_NAME_PATTERN, name):
                raise ValueError(f"tenant name {name!r}: letters, digits, '_', '.', '-', "
                                 "at most 64")
        return value

    def resolved_metrics_token(self) -> str | None:
        """The token /metrics requires, from `metrics_token_env`; None when unset."""
        token = os.environ.get(self.metrics_token_env, "").strip() if self.metrics_token_env else ""
        return token or None

    def resolved_api_keys(self) -> tuple[str, ...]:
        """The `default` tenant's keys: `api_keys` plus those in `api_keys_env`."""
        return resolve_keys(self.api_keys, self.api_keys_env)
