"""Names shared across processes: what a replica publishes and the ingress's router reads.

A replica (serving/replica/) reports these keys in Ray Serve's routing stats; the
request routers (serving/routing/) and the telemetry endpoint
(serving/observability/telemetry.py) in the ingress process read them. Renaming one
here renames it for both sides at once; a replica and an ingress of different
versions would then not understand each other, so a rename is a breaking change of
a rolling upgrade.

Import-free on purpose: every process imports it, the replica before vLLM is loaded
and the router without any serving dependency.
"""

from __future__ import annotations

from typing import Final

# The engine's KV-event ZMQ endpoint (serving/replica/server.py); the router
# subscribes to it to confirm and prune its ownership index.
KV_EVENTS_STATS_KEY: Final = "cacheroute_kv_events_endpoint"
# The engine's KV-event replay endpoint (vLLM's ROUTER socket, serving/replica/
# kv_endpoint.py); the router asks it for the batches it missed. A replica that does
# not report one is followed without replay.
KV_EVENTS_REPLAY_STATS_KEY: Final = "cacheroute_kv_events_replay_endpoint"
# The replica's deployment rank: its seat on the ring, so a replacement replica, which
# Serve gives its predecessor's rank, takes back the same arcs.
RANK_STATS_KEY: Final = "cacheroute_replica_rank"
# The engine's running cache and scheduler totals (serving/replica/engine_stats.py).
ENGINE_STATS_KEY: Final = "cacheroute_engine"
# The engine's progress report behind hang ejection (serving/replica/engine_progress.py).
ENGINE_PROGRESS_KEY: Final = "cacheroute_engine_progress"

__all__ = ["ENGINE_PROGRESS_KEY", "ENGINE_STATS_KEY", "KV_EVENTS_REPLAY_STATS_KEY",
           "KV_EVENTS_STATS_KEY", "RANK_STATS_KEY"]
