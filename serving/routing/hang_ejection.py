"""Hang ejection: a replica whose engine makes no progress leaves the ring until it does.

Each replica reports how long its engine has had work and taken no step
(serving/replica/engine_progress.py) in Serve's routing stats. Past
``failover.progress_timeout_s`` the router ejects it (``FleetEvents.eject``: off the
ring, its cache remembered, router/membership.py), so new requests and retries go
elsewhere; once it reports progress again it is readmitted with exactly its arcs.
Serve re-sends the replica list whenever a replica's stats change, so ``follow``
runs on every list. The replicas out of the ring are published to the failover's
attempt log (a waiting attempt on an ejected replica is retried, serving/failover/)
and to the failover metrics. O(N) per replica list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ray.serve.request_router import RunningReplica

from router import FleetEvents
from serving.contract import ENGINE_PROGRESS_KEY
from serving.failover.attempts import AttemptLog
from serving.failover.metrics import FailoverMetrics
from serving.replica.engine_progress import is_hung
from serving.routing.replica_stats import routing_stat

logger = logging.getLogger("ray.serve")


class HangEjection:
    def __init__(self, policy: FleetEvents, attempts: AttemptLog, *,
                 progress_timeout_s: float) -> None:
        self._policy = policy
        self._attempts = attempts
        self._progress_timeout_s = progress_timeout_s
        self._metrics = FailoverMetrics()

    @property
    def progress_timeout_s(self) -> float:
        return self._progress_timeout_s

    def follow(self, replicas: Iterable[RunningReplica]) -> list[str]:
        """Eject the replicas that report a hung engine and readmit those that
        progress again; returns the hung ones (no completion will free a slot there)."""
        hung: list[str] = []
        for replica in replicas:
            rid = replica.replica_id.unique_id
            report = routing_stat(replica, ENGINE_PROGRESS_KEY)
            if is_hung(report, self._progress_timeout_s):
                if self._policy.eject(rid):
                    logger.warning("cacheroute: replica %s made no progress for %.1f s; "
                                   "out of the ring", rid, report["stalled_s"])
                    self._metrics.on_ejection("ejected")
                hung.append(rid)
            elif rid in self._policy.ejected and self._policy.readmit(rid):
                logger.info("cacheroute: replica %s progresses again; back on the ring", rid)
                self._metrics.on_ejection("readmitted")
        self.publish()
        return hung

    def publish(self) -> None:
        """The replicas out of the ring, to the failover's attempt log and metrics."""
        self._attempts.set_ejected(self._policy.ejected)
        self._metrics.on_ejected(len(self._policy.ejected))
