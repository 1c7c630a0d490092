"""What a routing decision takes and gives: the policy's configuration, a request as
the policy sees it, and its answers.

``PolicyConfig`` is validated once, at construction; ``RouteRequest`` carries the
token ids exactly as the engine will see them, tokenised once upstream; a
``Decision`` names the chosen replica, why (``Outcome``, also a metric label) and
where to go next if it fails; a ``Placement`` says where a prefix lives without
routing it. The policy that produces them is ``policy.py``; what an adapter may call
on it is ``interface.py``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from router.hashing import DEFAULT_HASH_SEED
from router.outcome import Outcome
from router.ring import EmptyRingError


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    # Tokens per KV block; must equal the engines' block size or no hash matches (CPU build: 128).
    block_size: int = 16
    # Bounded-load slack: a replica may hold (1 + eps) x the mean load before spilling.
    load_epsilon: float = 0.25
    # A replica with fewer requests in flight than this always has room for a prefix it
    # holds or is home to, whatever the mean (``load.py``); a new prefix is still placed
    # by the mean. 4 stops single-request spills at low load, where the (1 + eps) x mean
    # cap is 1 or 2; an engine batches that many anyway. 0 is the bound alone.
    load_floor: int = 4
    # Ring points per replica: 160 keeps each replica's key share within about 10% of 1/N.
    virtual_nodes: int = 160
    # Index bound in block hashes: 200k x 16 tokens covers several engines' caches (~65 MB).
    max_index_blocks: int = 200_000
    # Ownership not refreshed for this long is dropped, bounding staleness if KV events stop.
    ownership_ttl_s: float = 600.0
    # A chain learned for a replica this recently is not written again (None: a tenth of
    # the TTL; 0 writes every block every time). ``ownership.py``, "Refresh once per interval".
    ownership_refresh_s: float | None = None
    # Hash chain root; must be the engines' seed (their PYTHONHASHSEED, else vLLM's default).
    hash_seed: str = DEFAULT_HASH_SEED
    # Shortest owned prefix worth following instead of the ring; 1 block already saves a prefill.
    min_owner_match_blocks: int = 1
    # Send a session's requests to its ring home, so a conversation's turns share one cache.
    session_affinity: bool = True
    # Ring keys whose hottest prefixes are tracked for prewarming a joining replica
    # (``hot_prefix_capacity``); 0 tracks nothing and costs nothing per decision.
    hot_prefix_capacity: int = 0
    # Longest tracked prefix in blocks: a replayed prefill must fit the engine's context.
    hot_prefix_max_blocks: int = 256
    # Half-life of a prefix's heat: 5 min ranks what is hot now above what was an hour ago.
    hot_prefix_half_life_s: float = 300.0

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if not 0.0 <= self.load_epsilon < float("inf"):
            raise ValueError(f"load_epsilon must be finite and >= 0, got {self.load_epsilon}")
        if not 0 <= self.load_floor <= 1_000_000:
            raise ValueError(f"load_floor must be in [0, 1000000], got {self.load_floor}")
        if self.virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {self.virtual_nodes}")
        if self.max_index_blocks < 1:
            raise ValueError(f"max_index_blocks must be >= 1, got {self.max_index_blocks}")
        if not 0.0 < self.ownership_ttl_s < float("inf"):
            raise ValueError(f"ownership_ttl_s must be finite and > 0, got {self.ownership_ttl_s}")
        if self.ownership_refresh_s is not None and \
                not 0.0 <= self.ownership_refresh_s < self.ownership_ttl_s:
            raise ValueError("ownership_refresh_s must be >= 0 and < ownership_ttl_s, "
                             f"got {self.ownership_refresh_s}")
        if not isinstance(self.hash_seed, str):
            raise TypeError(f"hash_seed must be a str, got {type(self.hash_seed).__name__}")
        if self.min_owner_match_blocks < 1:
            raise ValueError(
                f"min_owner_match_blocks must be >= 1, got {self.min_owner_match_blocks}"
            )
        if self.hot_prefix_capacity < 0:
            raise ValueError(
                f"hot_prefix_capacity must be >= 0, got {self.hot_prefix_capacity}")
        if self.hot_prefix_max_blocks < 1:
            raise ValueError(
                f"hot_prefix_max_blocks must be >= 1, got {self.hot_prefix_max_blocks}")
        if not 0.0 < self.hot_prefix_half_life_s < float("inf"):
            raise ValueError("hot_prefix_half_life_s must be finite and > 0, "
                             f"got {self.hot_prefix_half_life_s}")


@dataclass(frozen=True, kw_only=True)
class RouteRequest:
    """What the policy needs to know about one request; tokenised once upstream."""

    # Prompt token ids, exactly as the engine will see them (after chat templating):
    # a tuple, or an ``array("I")`` that the block hasher reads without packing it
    # (router/hashing.py). Not changed once the request is built.
    token_ids: Sequence[int] | None = None
    # vLLM's per-request cache isolation salt; it changes the first block's hash.
    cache_salt: str | None = None
    # LoRA adapter name and path; vLLM keys every block by both.
    lora_name: str | None = None
    lora_path: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if (self.lora_name is None) != (self.lora_path is None):
            raise ValueError("lora_name and lora_path must be given together")


@dataclass(frozen=True, kw_only=True)
class Decision:
    replica_id: str
    outcome: Outcome
    # Leading blocks the index believes the chosen replica holds (0 if not an owner).
    matched_blocks: int
    # Full blocks in the prompt.
    total_blocks: int
    # The chosen replica, then every other replica in ring order: the retry list.
    # A lazy ``RingOrder`` from the policy (equal to the tuple it stands for).
    ranked: Sequence[str]

    @property
    def send_order(self) -> Sequence[str]:
        """Where a caller whose replicas have a concurrency cap (Serve's
        ``max_ongoing_requests``) may send the request, first choice first, while
        the chosen replica is at that cap.

        The chosen replica alone when the request has a cache key: the load bound
        was applied when choosing it, and a full prefill elsewhere costs a slow
        engine more than the wait for a slot (docs/benchmarks/simulator.md); the
        caller asks again later and the bound then decides with the new loads
        (router/admission.py). All of ``ranked`` for NO_KEY (nothing cached is at stake)
        and FAILOVER (the chosen replica already failed once).
        """
        if self.outcome is Outcome.NO_KEY or self.outcome is Outcome.FAILOVER:
            return self.ranked
        return (self.replica_id,)

    def failover(self, failed: Collection[str]) -> Decision:
        """The next ranked replica not in ``failed``, as a FAILOVER decision."""
        remaining = tuple(r for r in self.ranked if r not in failed and r != self.replica_id)
        if not remaining:
            raise EmptyRingError("no replica left to fail over to")
        return replace(
            self,
            replica_id=remaining[0],
            outcome=Outcome.FAILOVER,
            matched_blocks=0,
            ranked=remaining,
        )


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where a prefix lives, read without routing it (``CacheAwarePolicy.placement``)."""

    # Replicas believed to hold every full block of the prefix (empty: nobody does).
    holders: frozenset[str]
    # Where the next request with this prefix goes at zero load: the first holder in
    # ring order, or the ring home of its first block when nobody holds it.
    home: str
    total_blocks: int
