"""The tenant sections of the service config: `server.tenants` (who holds which API
keys) and `tenant_limits` (what each tenant may use).

Validation only; `serving/tenants/identity.py` resolves keys to tenants, and the
ingress, prefix registry and document service enforce the limits.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from serving.config_section import ConfigSection

# A tenant name is part of log lines and of the config's YAML keys: keep it plain.
TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def plain_keys(value: tuple[str, ...]) -> tuple[str, ...]:
    """The validator of every `api_keys` field."""
    if any(not k or k != k.strip() for k in value):
        raise ValueError("API keys must be non-empty and without surrounding spaces")
    return value


class TenantLimits(ConfigSection):
    """What one tenant may use (docs/security.md). Null leaves a limit to the
    service-wide one; a tenant's own `limits` override these field by field."""

    max_prefixes: int | None = Field(None, ge=1)
    """Registered prefixes one tenant keeps; beyond it, its own least recently used
    goes. Null: `prefixes.max_prefixes`."""
    max_prefix_total_tokens: int | None = Field(None, ge=1)
    """Tokens of one tenant's registered prefixes together; beyond it, its own least
    recently used goes. Null: `prefixes.max_total_tokens`."""
    max_documents: int | None = Field(None, ge=1)
    """Documents one tenant keeps; beyond it, its own lowest-scoring goes. Null:
    `documents.max_documents`."""
    max_document_tokens: int | None = Field(None, ge=1)
    """Tokens of one tenant's documents together. Null: `documents.max_total_tokens`."""
    requests_per_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Sustained requests per second one tenant may send to each ingress replica, a
    token bucket (429 `rate_limit_exceeded` above it, `Retry-After` saying when the
    next is allowed). Null: no rate limit, so a service whose tenants are not set up
    refuses nothing by rate."""
    burst: int | None = Field(None, ge=1)
    """Requests a tenant that has been idle may send back to back before
    `requests_per_s` applies (the bucket's size). Null: one second's worth,
    `requests_per_s` rounded up, at least 1."""
    max_concurrent_requests: int | None = Field(None, ge=1)
    """Requests of one tenant in flight at once in each ingress replica, a stream until
    its last chunk (429 `rate_limit_exceeded`, `Retry-After: 1`, above it). Null:
    `server.max_concurrent_requests`, so one tenant alone may fill the ingress."""

    def over(self, override: "TenantLimits | None") -> "TenantLimits":
        """These limits with every field `override` sets replaced by its value."""
        if override is None:
            return self
        return self.model_copy(update={name: getattr(override, name)
                                       for name in override.model_fields_set})


class TenantConfig(ConfigSection):
    """One tenant: the API keys that act for it, and limits of its own."""

    api_keys: tuple[str, ...] = ()
    """Bearer tokens of this tenant. Prefer `api_keys_env`, which keeps them out of
    the file."""
    api_keys_env: str | None = None
    """Environment variable holding this tenant's comma-separated keys (added to
    `api_keys`)."""
    limits: TenantLimits | None = None
    """This tenant's own limits, field by field over `tenant_limits`."""

    _keys_nonempty = field_validator("api_keys")(plain_keys)

    def resolved_api_keys(self) -> tuple[str, ...]:
        return resolve_keys(self.api_keys, self.api_keys_env)


def resolve_keys(keys: tuple[str, ...], env: str | None) -> tuple[str, ...]:
    """`keys` plus the comma-separated keys of the environment variable `env`."""
    found = list(keys)
    if env:
        found += [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
    return tuple(dict.fromkeys(found))
