"""The attempt log under its former name, for serving/routing/cacheroute.py until it
takes ``local_routers().attempts`` (serving/routing/registry.py) and imports
``AttemptLog`` from serving/failover/attempts.py; then this module goes."""

from __future__ import annotations

from serving.failover.attempts import AttemptLog
from serving.routing.registry import local_routers

__all__ = ["AttemptLog", "process_attempt_log"]


def process_attempt_log() -> AttemptLog:
    return local_routers().attempts
