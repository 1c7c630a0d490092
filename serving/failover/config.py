"""The `failover` section of the service config: retries, stream resume, hang ejection,
draining, and the prewarm of a replica that joins.

Validation only; `serving/failover/failover.py` retries and resumes, the replica and
the router act on the timeouts, and `serving/routing/prewarm.py` prewarms.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from serving.config_section import ConfigSection


class FailoverConfig(ConfigSection):
    """What happens when a replica fails, hangs, leaves or joins
    (docs/operations/failover.md)."""

    enabled: bool = True
    """Retry a request whose replica fails and resume a stream that breaks mid-way on
    another replica. Off: a replica failure reaches the client."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Tries per request, the first included; each retry avoids every replica that
    already failed it. The default rides out one failure plus one more during the
    recovery; raise it where replicas fail often."""
    backoff_s: float = Field(0.2, ge=0, le=60, allow_inf_nan=False)
    """Wait before the first retry, doubled per retry up to `max_backoff_s`: a burst of
    failures from one death does not turn into a burst of retries on the survivors."""
    max_backoff_s: float = Field(2.0, ge=0, le=600, allow_inf_nan=False)
    """Cap of the doubled wait between retries."""
    progress_timeout_s: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False)
    """A replica whose engine has work but completes no step for this long is hung: it
    leaves the ring and its requests move on. Measured on the engine (a step, not a
    token of one request), so a merely busy replica never trips it. Keep it well above
    the longest single engine step, a full-length prefill on the slowest hardware."""
    drain_timeout_s: float = Field(120.0, ge=0, le=3600, allow_inf_nan=False)
    """A replica leaving (scale-down, redeploy) takes no new requests and gets this long
    to finish the ones it has (Serve's graceful_shutdown_timeout_s). Keep it above a
    full-length generation on the slowest hardware."""
    prewarm_on_scale_up: bool = False
    """Send a replica that joins (a scale-up, or the replacement of a dead one) the
    hottest prefixes of the ring arc it takes over, one prefill each, before it is
    routed their traffic as their owner. The hot prefixes' load then moves to it with
    cache hits instead of staying on their old owners, and the hit rate dips less. Off
    by default: every request is then counted in a hot-prefix table, and the newcomer
    spends its first seconds on prefills. Only `routing.policy: cacheroute` has owners
    to teach; with another policy it does nothing."""
    prewarm_prefixes: int = Field(16, ge=1, le=1024)
    """How many of the hottest prefixes of its arc a joining replica is sent. Each is a
    prefill of up to `engine.max_model_len` tokens, a few at a time per ingress: lower
    it where prefills are slow, so that a newcomer's prewarm ends sooner."""

    @model_validator(mode="after")
    def _backoff_bounds(self) -> "FailoverConfig":
        if self.backoff_s > self.max_backoff_s:
            raise ValueError("backoff_s must not exceed max_backoff_s")
        return self
