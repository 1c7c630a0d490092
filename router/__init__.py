"""cacheroute's routing core: KV-cache-aware replica selection, free of Ray, vLLM and torch.

A request's prompt tokens are cut into the engine's blocks and hashed exactly as
vLLM hashes them (``hashing``); an index of which replica holds which blocks
(``ownership``), fed by routing decisions and by the engines' KV events
(``kv_events``: wire structs and decoding), finds the replica with the longest
cached prefix; a consistent-hash ring (``ring``) with bounded loads (``load``)
places prefixes nobody holds (``selection``); ``membership`` keeps the ring's
members and the hung replicas off it; ``hot_prefixes`` names what a joining replica
should prefill first. ``policy`` combines them into one ``Decision`` (``decision``)
whose ``Outcome`` is also a metric label; ``admission`` holds a request for a slot
or before a spill and decides again when it is woken. ``interface`` names what an
adapter may call, by use.

``__all__`` below is exactly what the serving layer and the benchmarks may import
(a unit test checks every ``from router... import`` there); the Ray Serve adapter
and the simulator live outside this package.
"""

from router.admission import (
    SLOT_WAIT_S,
    Admission,
    Hold,
    Loads,
    Send,
    SpillWaitResult,
    Step,
    Ticket,
    WaitKind,
)
from router.decision import Decision, Placement, PolicyConfig, RouteRequest
from router.hashing import DEFAULT_HASH_SEED, BlockHash, PrefixHasher, engine_hash_seed
from router.hot_prefixes import HotPrefix, HotPrefixTracker
from router.interface import AdmissionPolicy, FleetEvents, PrefixReads, RoutingPolicy
from router.kv_events import AppliedEvents, KVEventBatch, decode_batch
from router.load import InFlightCounts
from router.outcome import Outcome
from router.policy import CacheAwarePolicy
from router.ring import EmptyRingError, HashRing, rank_seat

__all__ = [
    "DEFAULT_HASH_SEED",
    "SLOT_WAIT_S",
    "Admission",
    "AdmissionPolicy",
    "AppliedEvents",
    "BlockHash",
    "CacheAwarePolicy",
    "Decision",
    "EmptyRingError",
    "FleetEvents",
    "HashRing",
    "Hold",
    "HotPrefix",
    "HotPrefixTracker",
    "InFlightCounts",
    "KVEventBatch",
    "Loads",
    "Outcome",
    "Placement",
    "PolicyConfig",
    "PrefixHasher",
    "PrefixReads",
    "RouteRequest",
    "RoutingPolicy",
    "Send",
    "SpillWaitResult",
    "Step",
    "Ticket",
    "WaitKind",
    "decode_batch",
    "engine_hash_seed",
    "rank_seat",
]
