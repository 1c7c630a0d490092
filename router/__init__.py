"""cacheroute's routing core: KV-cache-aware replica selection, free of Ray, vLLM and torch.

A request's prompt tokens are cut into the engine's blocks and hashed exactly as
vLLM hashes them (``hashing``); an index of which replica holds which blocks
(``ownership``), fed by routing decisions and by the engines' KV events
(``kv_events``), finds the replica with the longest cached prefix; a
consistent-hash ring (``ring``) with bounded loads (``load``) places prefixes
nobody holds; ``hot_prefixes`` names what a joining replica should prefill first.
``policy`` combines them into one ``Decision`` (``decision``) whose ``Outcome`` is
also a metric label. Adapters (Ray Serve, HTTP) live outside this package.
"""

from router.decision import (
    Decision,
    Placement,
    PolicyConfig,
    RouteRequest,
    RoutingPolicy,
)
from router.hashing import DEFAULT_HASH_SEED, BlockHash, PrefixHasher, engine_hash_seed
from router.hot_prefixes import HotPrefix, HotPrefixTracker
from router.kv_events import (
    AppliedEvents,
    KVEventBatch,
    KVEventSubscriber,
    decode_batch,
)
from router.outcome import Outcome
from router.policy import CacheAwarePolicy
from router.ring import EmptyRingError, HashRing, rank_seat

__all__ = [
    "DEFAULT_HASH_SEED",
    "AppliedEvents",
    "BlockHash",
    "CacheAwarePolicy",
    "Decision",
    "EmptyRingError",
    "HashRing",
    "HotPrefix",
    "HotPrefixTracker",
    "rank_seat",
    "KVEventBatch",
    "KVEventSubscriber",
    "Outcome",
    "Placement",
    "PolicyConfig",
    "PrefixHasher",
    "RouteRequest",
    "RoutingPolicy",
    "decode_batch",
    "engine_hash_seed",
]
