"""The comparison policies, unchanged, plus per-replica telemetry on `/metrics`.

`pow2` is Ray Serve's default router and `ray-prefix` is `ray.serve.llm`'s
`PrefixCacheAffinityRouter`. These subclasses only add `replica_views()` (the app's
`/metrics` reads replicas' engine telemetry through the router that holds them,
serving/observability/telemetry.py), so a benchmark compares the routing of the upstream classes
while every policy reports the same per-replica series.

`random` is the floor every policy must beat: neither cache- nor load-aware. It
ranks all candidates in a uniformly random order, one replica per rank, O(n) per
request; Serve's base class then takes the first ranked replica with room under
`max_ongoing_requests`, so a full replica is skipped rather than queued on.
"""

from __future__ import annotations

import random

from ray.serve.llm.request_router import PrefixCacheAffinityRouter
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serving.observability.telemetry import ReplicaView, views_from
from serving.ray_private import PowerOfTwoChoicesRequestRouter
from serving.routing.in_flight import SentRequests
from serving.routing.registry import local_routers


class _ReplicaTelemetry(SentRequests):
    """Mixin for a RequestRouter: exposes its replicas to the app's /metrics, with the
    in-flight counts every policy reports alike (serving/routing/in_flight.py)."""

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)  # type: ignore[misc]
        local_routers().register_source(self)  # idempotent (a set); the first update is the earliest hook

    def replica_views(self) -> list[ReplicaView]:
        return views_from(list(self.curr_replicas.values()),  # type: ignore[attr-defined]
                          self.in_flight)


class Pow2Router(_ReplicaTelemetry, PowerOfTwoChoicesRequestRouter):
    pass


class RayPrefixRouter(_ReplicaTelemetry, PrefixCacheAffinityRouter):
    pass


class RandomRouter(_ReplicaTelemetry, RequestRouter):
    """Every candidate once, in a uniformly random order."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Unseeded: each router process draws its own stream. The benchmark compares
        # policies over many requests, so it needs uniformity, not a repeatable order.
        self._rng = random.Random()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        return random_ranks(candidate_replicas, self._rng)


def random_ranks(candidates: list[RunningReplica], rng: random.Random) -> list[list[RunningReplica]]:
    """Each candidate as its own rank, in a uniformly random order."""
    return [[r] for r in rng.sample(candidates, len(candidates))]
