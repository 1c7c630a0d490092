"""The comparison policies, unchanged, plus per-replica telemetry on `/metrics`.

`pow2` is Ray Serve's default router and `ray-prefix` is `ray.serve.llm`'s
`PrefixCacheAffinityRouter`. These subclasses only add `replica_views()` (the app's
`/metrics` reads replicas' engine telemetry through the router that holds them,
serving/telemetry.py), so a benchmark compares the routing of the upstream classes
while every policy reports the same per-replica series.
"""

from __future__ import annotations

from typing import List

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.llm.request_router import PrefixCacheAffinityRouter
from ray.serve.request_router import RunningReplica

from serving.telemetry import ReplicaView, register_source, views_from


class _ReplicaTelemetry:
    """Mixin for a RequestRouter: exposes its replicas to the app's /metrics."""

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)  # type: ignore[misc]
        register_source(self)  # idempotent (a set); the first update is the earliest hook

    def replica_views(self) -> list[ReplicaView]:
        return views_from(list(self.curr_replicas.values()),  # type: ignore[attr-defined]
                          self._replica_queue_len_cache)  # type: ignore[attr-defined]


class Pow2Router(_ReplicaTelemetry, PowerOfTwoChoicesRequestRouter):
    pass


class RayPrefixRouter(_ReplicaTelemetry, PrefixCacheAffinityRouter):
    pass
