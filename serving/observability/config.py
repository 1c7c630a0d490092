"""The `tracing` section of the service config: OpenTelemetry spans per request.

Validation only; `serving/observability/tracing.py` installs the tracer from it when
tracing is on.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from serving.config_section import ConfigSection


class TracingConfig(ConfigSection):
    """OpenTelemetry request tracing (docs/operations/tracing.md)."""

    enabled: bool = False
    """OpenTelemetry spans per request: ingress, routing decision, replica (and the
    engine's own, with `otlp_endpoint`). Off, nothing is installed in the request
    path; turn it on to see where a request's time goes."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces URL, such as `http://otel-collector:4318/v1/traces`; setting it
    also turns on vLLM's engine spans. Null: the exporter's
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT environment variable, else a node-local collector
    at http://localhost:4318/v1/traces."""
    service_name: str = Field("cacheroute", min_length=1, max_length=256)
    """`service.name` resource attribute of every span; change it to tell deployments
    apart in one tracing backend."""
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of new traces recorded. Parent-based: a client's `traceparent` sampled flag
    decides for its own requests, so a caller's sampled trace is never cut short. Lower
    it when the traffic is more than the tracing backend should store."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (the OTLP/HTTP traces endpoint)")
        return value
