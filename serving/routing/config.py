"""The `routing` section of the service config: which policy routes requests between
replicas, and the knobs of the `cacheroute` policy.

The knobs the routing core also has (`router.PolicyConfig`: the load bound, the ring,
the ownership index, session affinity) take their defaults from it, so the service,
the simulator and the benchmarks route alike when nothing is set; the chart's values
and schema are generated from this section in turn (tools/gen_chart_values.py). Only
validation here: `serving/routing/cacheroute.py` builds the core's config from it.
Importing this module costs pydantic and the pure routing core (no Ray, no vLLM).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from router import PolicyConfig
from serving.config_section import ConfigSection

Policy = Literal["pow2", "ray-prefix", "cacheroute", "random"]
POLICIES: tuple[str, ...] = get_args(Policy)

# The routing core's defaults: the one place they are written (router/decision.py).
_CORE = PolicyConfig()


class RoutingConfig(ConfigSection):
    """How requests are routed between replicas (docs/routing.md)."""

    policy: Policy = "cacheroute"
    """`cacheroute` (this project's cache-aware router), `pow2` (Ray Serve's default
    power-of-two choices), `ray-prefix` (Ray's PrefixCacheAffinityRouter) or `random`
    (a uniformly random replica: a baseline for benchmarks). Change it to compare
    policies; the other fields of this section tune `cacheroute` only."""
    load_epsilon: float = Field(_CORE.load_epsilon, gt=0, le=10)
    """Bounded-load slack: while another replica has room, none holds more than
    ceil((1 + eps) x mean) requests in flight, counted above `load_floor`. Lower it to
    spread load more evenly at the cost of cache hits; raise it to keep more requests
    on the replica that holds their prefix, at the cost of queueing there."""
    load_floor: int = Field(_CORE.load_floor, ge=0, le=4096)
    """A replica with fewer requests in flight than this always has room for a prefix it
    holds or is home to, whatever the mean: the load bound counts only above it (like
    SGLang's `balance_abs_threshold`). At low load, where ceil((1 + eps) x mean) is one
    or two, it keeps a prefix on its owner instead of spilling it over one request's
    difference that the engine would batch anyway; a new prefix is still placed at or
    below the mean load. It lets a hot prefix's home take up to this many requests
    before any spill; on a fleet with many requests in flight per replica it changes
    nothing. Set it near the batch an engine runs without slowing down; 0 is the
    bound alone."""
    virtual_nodes: int = Field(_CORE.virtual_nodes, ge=1, le=10_000)
    """Ring points per replica: more points even out the replicas' shares of new
    prefixes, at the cost of a larger ring. A new value re-homes most prefixes, so
    change it with a deploy, not on a warm fleet."""
    max_index_blocks: int = Field(_CORE.max_index_blocks, ge=1)
    """LRU bound of the ownership index: block hashes remembered across all replicas.
    Raise it when the fleet's KV caches together hold more blocks, so the index does
    not forget prefixes the engines still hold."""
    ownership_ttl_s: float = Field(_CORE.ownership_ttl_s, gt=0)
    """An owned block neither re-learned nor confirmed for this long is forgotten, so
    the index stays right when KV events stop. A prefix routed to the same replica
    again within a tenth of this is not written again, and a block an engine confirmed
    counts from a tenth less (router/ownership.py): a block may go up to that much
    sooner. Lower it when KV events may be lost and stale ownership would mislead."""
    session_affinity: bool = _CORE.session_affinity
    """Route by the `x-session-id` header, else the body's `user`, before prefix
    ownership, so a conversation's turns share one replica's cache. Turn it off when
    those values do not name conversations."""
    spill_wait_s: float = Field(0.0, ge=0, le=60)
    """Before the load bound sends a request away from the replicas holding its prefix,
    wait up to this long for one of them to finish a request, then decide again: a slot
    freed under the bound turns a full prefill elsewhere into a cache hit. The wait ends
    at the first completion; a request whose every owner already has one waiting spills
    at once. 0 turns the wait off; a few seconds suit a fleet that keeps up with its
    traffic, where owners free slots soon (docs/routing.md)."""
    replicate_before_spill: bool = False
    """When a request fills the last owner of its prefix that had room under the load
    bound, prefill that prefix (one generated token) on the replica its next request
    would spill to, so the spill finds it cached. It costs a prefill on a replica with
    room also when no spill follows, which can cost more time to first token than the
    spills save: off by default, and worth measuring on the target hardware before
    turning it on (docs/benchmarks/README.md)."""
