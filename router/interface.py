"""What the adapters may ask of a routing policy, one small protocol per use.

The Ray Serve adapter (serving/routing/) and the simulator (bench/sim/) never reach
into ``CacheAwarePolicy``: each of their parts is typed by the protocol it uses.

* ``RoutingPolicy``: one decision per call. All a router without waits needs.
* ``AdmissionPolicy``: what ``admission.Admission`` drives, the decision with its
  hashes given and a spill that may be held (the spill wait) and committed later.
* ``FleetEvents``: the fleet changing under the policy: replica lists, removals,
  hung replicas out of the ring and back, the engines' KV events, and prefixes a
  replica was sent outside a decision (a prewarm) or that were withdrawn.
* ``PrefixReads``: questions about where prefixes live, answered without routing:
  placement, blocks per replica, the hottest prefixes of an arc, the replica a
  prefix's next request would spill to.

``CacheAwarePolicy`` (``policy.py``) is all four; a unit test checks it keeps every
member. Protocols, not base classes: a fake for a test implements only what the
code under test calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from router.decision import Decision, Placement, RouteRequest
from router.hashing import BlockHash
from router.hot_prefixes import HotPrefix
from router.kv_events import AppliedEvents, KVEventBatch


@runtime_checkable
class RoutingPolicy(Protocol):
    """The one method a routing adapter needs."""

    def select(self, request: RouteRequest, in_flight: Mapping[str, int], *,
               hold_spill: bool = False) -> Decision:
        """Choose a replica; ``in_flight`` maps replica id to its running requests.
        With ``hold_spill`` a SPILL is not recorded until ``commit``."""
        ...


@runtime_checkable
class AdmissionPolicy(RoutingPolicy, Protocol):
    """What the waiting protocol (``admission.py``) calls: hashes once per request,
    decisions from them, and the spill wait's owners and commit."""

    def block_hashes(self, request: RouteRequest) -> list[BlockHash]: ...

    def select_hashed(self, request: RouteRequest, hashes: Sequence[BlockHash],
                      in_flight: Mapping[str, int], *, hold_spill: bool = False) -> Decision: ...

    def spill_owners(self, request: RouteRequest,
                     hashes: Sequence[BlockHash] | None = None) -> frozenset[str]: ...

    def commit(self, request: RouteRequest, decision: Decision,
               hashes: Sequence[BlockHash] | None = None) -> None: ...


@runtime_checkable
class FleetEvents(Protocol):
    """The fleet as it changes: each call is safe from any thread."""

    @property
    def replicas(self) -> frozenset[str]:
        """The replicas on the ring (members not ejected)."""
        ...

    @property
    def ejected(self) -> frozenset[str]: ...

    def set_replicas(self, replica_ids: Iterable[str],
                     seats: Mapping[str, str] | None = None) -> None: ...

    def on_replica_removed(self, replica_id: str) -> None: ...

    def eject(self, replica_id: str) -> bool: ...

    def readmit(self, replica_id: str) -> bool: ...

    def on_kv_events(self, replica_id: str, batch: KVEventBatch) -> AppliedEvents: ...

    def learn(self, replica_id: str, request: RouteRequest) -> int: ...

    def forget_prefix(self, request: RouteRequest) -> int: ...


@runtime_checkable
class PrefixReads(Protocol):
    """Where prefixes live, read without routing or learning anything."""

    def placement(self, request: RouteRequest) -> Placement | None: ...

    def owned_blocks(self) -> dict[str, int]: ...

    def hot_prefixes_of(self, replica_id: str, limit: int) -> list[HotPrefix]: ...

    def spill_target(self, request: RouteRequest, decision: Decision,
                     in_flight: Mapping[str, int]) -> tuple[str, int] | None: ...
