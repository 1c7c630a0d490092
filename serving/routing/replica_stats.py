"""What replicas publish in Serve's routing stats, as the router reads it.

Each replica reports a few values through ``record_routing_stats`` (serving/replica/
server.py; keys in serving/contract.py): its rank (a stable ring seat), its engine's
progress (for hang ejection) and its KV-events endpoints. Serve re-sends the replica
list to the router whenever a replica's stats change. A replica that has not reported
yet (its first stats arrive within seconds of joining) reads as None.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.serve.request_router import RunningReplica

from router import rank_seat
from serving.contract import KV_EVENTS_REPLAY_STATS_KEY, KV_EVENTS_STATS_KEY, RANK_STATS_KEY
from serving.routing.kv_events import KVEventSource


def routing_stat(replica: RunningReplica, key: str) -> Any:
    """One value a replica published in Serve's routing stats; None until it has."""
    try:
        return (replica.routing_stats or {}).get(key)
    except AttributeError:  # a replica wrapper without routing info yet
        return None


def rank_seats(replicas: Iterable[RunningReplica]) -> dict[str, str]:
    """Ring seats from the ranks replicas report; a replica that has not reported
    its rank sits at its id (it has no entry here)."""
    seats: dict[str, str] = {}
    for r in replicas:
        rank = routing_stat(r, RANK_STATS_KEY)
        if isinstance(rank, int):
            seats[r.replica_id.unique_id] = rank_seat(rank)
    return seats


def kv_event_sources(
        replicas: Iterable[RunningReplica]) -> list[tuple[str, KVEventSource | None]]:
    """Each replica's id and where its engine publishes KV events (None: not reported
    yet), at the addresses the replica advertised."""
    out: list[tuple[str, KVEventSource | None]] = []
    for r in replicas:
        endpoint = routing_stat(r, KV_EVENTS_STATS_KEY)
        source = None
        if isinstance(endpoint, str) and endpoint:
            replay = routing_stat(r, KV_EVENTS_REPLAY_STATS_KEY)
            source = KVEventSource(endpoint, replay if isinstance(replay, str) and replay
                                   else None)
        out.append((r.replica_id.unique_id, source))
    return out
