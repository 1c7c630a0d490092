"""make_* builders of real router objects for the unit tests (no mocks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from router import CacheAwarePolicy, Decision, HashRing, Outcome, PolicyConfig, RouteRequest
from router.hashing import BlockHash
from router.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from router.ownership import OwnershipIndex


class FakeClock:
    """A settable monotonic clock, injected wherever the code takes ``clock=``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_replica_ids(count: int, prefix: str = "replica") -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def make_config(**overrides: object) -> PolicyConfig:
    # The bound alone unless a test sets a floor: these tests place a few requests and
    # count on the (1 + eps) x mean cap, which the default floor of 4 would lift.
    fields: dict[str, object] = {"block_size": 4, "load_floor": 0}
    fields.update(overrides)
    return PolicyConfig(**fields)  # type: ignore[arg-type]


def ring_of(*replicas: str) -> HashRing:
    """The ring ``make_policy`` builds over these replicas (default virtual nodes)."""
    return HashRing(replicas, virtual_nodes=make_config().virtual_nodes)


def make_policy(
    replicas: Iterable[str] = ("a", "b", "c"),
    *,
    clock: FakeClock | None = None,
    **config: object,
) -> CacheAwarePolicy:
    return CacheAwarePolicy(make_config(**config), replicas=replicas, clock=clock or FakeClock())


def make_tokens(num_tokens: int, *, start: int = 1000) -> tuple[int, ...]:
    return tuple(range(start, start + num_tokens))


def make_request(
    num_tokens: int = 16,
    *,
    start: int = 1000,
    tokens: Sequence[int] | None = None,
    session_id: str | None = None,
    cache_salt: str | None = None,
) -> RouteRequest:
    return RouteRequest(
        token_ids=tuple(tokens) if tokens is not None else make_tokens(num_tokens, start=start),
        session_id=session_id,
        cache_salt=cache_salt,
    )


def make_index(
    *, max_entries: int = 100, ttl_s: float = 60.0, refresh_s: float | None = None,
    clock: FakeClock | None = None,
) -> OwnershipIndex:
    return OwnershipIndex(max_entries=max_entries, ttl_s=ttl_s, refresh_s=refresh_s,
                          clock=clock or FakeClock())


def make_hashes(*values: int) -> list[BlockHash]:
    return [BlockHash(v) for v in values]


def make_stored(
    hashes: Sequence[int | bytes],
    *,
    block_size: int = 4,
    medium: str | None = "GPU",
    **extra: object,
) -> BlockStored:
    return BlockStored(
        block_hashes=list(hashes),
        parent_block_hash=None,
        token_ids=list(range(block_size * len(hashes))),
        block_size=block_size,
        lora_id=None,
        medium=medium,
        lora_name=None,
        **extra,  # type: ignore[arg-type]
    )


def make_removed(hashes: Sequence[int | bytes], *, medium: str | None = "GPU") -> BlockRemoved:
    return BlockRemoved(block_hashes=list(hashes), medium=medium)


def make_batch(
    *events: BlockStored | BlockRemoved | AllBlocksCleared, ts: float = 1.0
) -> KVEventBatch:
    return KVEventBatch(ts=ts, events=list(events))


class ScriptedPolicy:
    """A fake ``AdmissionPolicy`` for the waiting protocol's tests: a request goes to the
    replica its session id names (an OWNER_HIT, the other replicas ranked after it), or
    to the next of the (replica, outcome) pairs scripted for that session id. Records
    every decision's loads and every commit."""

    def __init__(self, replicas: Sequence[str] = ("a", "b", "c"), *,
                 script: dict[str, list[tuple[str, Outcome]]] | None = None,
                 owners: dict[str, frozenset[str]] | None = None) -> None:
        self.replicas = tuple(replicas)
        self._script = {k: list(v) for k, v in (script or {}).items()}
        self._owners = owners or {}
        self.decided: list[tuple[str, dict[str, int], bool]] = []
        self.commits: list[str] = []

    def block_hashes(self, request: RouteRequest) -> list[BlockHash]:
        return make_hashes(1)

    def select(self, request: RouteRequest, in_flight: Mapping[str, int], *,
               hold_spill: bool = False) -> Decision:
        return self.select_hashed(request, self.block_hashes(request), in_flight,
                                  hold_spill=hold_spill)

    def select_hashed(self, request: RouteRequest, hashes: Sequence[BlockHash],
                      in_flight: Mapping[str, int], *, hold_spill: bool = False) -> Decision:
        key = request.session_id or ""
        scripted = self._script.get(key)
        chosen, outcome = scripted.pop(0) if scripted else (key, Outcome.OWNER_HIT)
        self.decided.append((chosen, dict(in_flight), hold_spill))
        return Decision(replica_id=chosen, outcome=outcome, matched_blocks=1, total_blocks=1,
                        ranked=(chosen, *(r for r in self.replicas if r != chosen)))

    def spill_owners(self, request: RouteRequest,
                     hashes: Sequence[BlockHash] | None = None) -> frozenset[str]:
        return self._owners.get(request.session_id or "", frozenset())

    def commit(self, request: RouteRequest, decision: Decision,
               hashes: Sequence[BlockHash] | None = None) -> None:
        self.commits.append(decision.replica_id)
