"""Requests in flight per replica, as one Ray Serve router sees them, for every policy.

Serve's queue-length cache holds each replica's own count at its last report plus the
sends since. An entry not refreshed for ``RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S``
(10 s) reads as unknown, and the next send restarts it at 1, so a replica busy with
long generations looks idle: to a load bound, and to the load-skew figures that
``cacheroute_replica_in_flight`` feeds (serving/observability/telemetry.py, bench/service_metrics.py).

``SentRequests`` is a ``RequestRouter`` mixin that also counts what this router sent
to each replica and saw no completion of: Serve calls ``on_send_request`` once per
dispatch and ``on_request_completed`` exactly once per dispatched request, rejected
ones included. ``in_flight`` is the larger of the two counts: the cache sees other
routers' requests at each report, the router's own count survives the timeout. Every
policy's router (serving/routing/cacheroute.py, serving/routing/baselines.py) reads the same
figure, so their load skews compare.

Serve calls these hooks on the router's event loop; the dict is not shared with
other threads.
"""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import ReplicaID


class SentRequests:
    """Mixin for a ``RequestRouter``: place it before the router class in the bases."""

    _sent: dict[str, int]
    _replica_queue_len_cache: Any  # RequestRouter's

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sent = {}
        super().__init__(*args, **kwargs)

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)  # type: ignore[misc]
        rid = replica_id.unique_id
        self._sent[rid] = self._sent.get(rid, 0) + 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)  # type: ignore[misc]
        rid = replica_id.unique_id
        left = self._sent.get(rid, 0) - 1
        if left > 0:
            self._sent[rid] = left
        else:
            self._sent.pop(rid, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)  # type: ignore[misc]
        self._sent.pop(replica_id.unique_id, None)

    def in_flight(self, replica_id: ReplicaID) -> int:
        """Requests in flight on the replica: Serve's cached queue length, or what
        this router sent there and saw no completion of when that is higher (the
        cache entry went stale, or was restarted by a send after going stale)."""
        return max(self._replica_queue_len_cache.get(replica_id) or 0,
                   self._sent.get(replica_id.unique_id, 0))
