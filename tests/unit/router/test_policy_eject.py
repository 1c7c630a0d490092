"""Ejecting a hung replica from the ring, and readmitting it (CacheAwarePolicy)."""

from __future__ import annotations

from router import Outcome
from tests.unit.router.router_factories import make_policy, make_replica_ids, make_request

REPLICAS = make_replica_ids(4)


def homes(policy, n: int = 400) -> list[str]:
    """Where n distinct prefixes go at zero load (their ring homes)."""
    return [policy.select(make_request(8, start=10_000 + 100 * i), {}).replica_id
            for i in range(n)]


def test_an_ejected_replica_gets_no_new_keys_and_only_its_keys_move() -> None:
    policy = make_policy(REPLICAS)
    before = homes(make_policy(REPLICAS))
    assert policy.eject("replica-1")
    after = homes(policy)
    assert "replica-1" not in after
    moved = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert moved and all(before[i] == "replica-1" for i in moved)


def test_readmit_gives_back_exactly_its_arcs() -> None:
    reference = homes(make_policy(REPLICAS))
    policy = make_policy(REPLICAS)
    policy.eject("replica-2")
    assert policy.readmit("replica-2")
    assert homes(make_policy(REPLICAS)) == reference
    assert policy.replicas == frozenset(REPLICAS) and not policy.ejected


def test_ejection_keeps_what_the_replica_caches() -> None:
    policy = make_policy(REPLICAS)
    request = make_request(16, start=5)
    owner = policy.select(request, {}).replica_id
    policy.eject(owner)
    assert policy.select(request, {}).replica_id != owner
    policy.readmit(owner)
    decision = policy.select(request, {})
    assert decision.replica_id == owner and decision.outcome is Outcome.OWNER_HIT


def test_membership_updates_keep_an_ejected_replica_out_until_it_leaves() -> None:
    policy = make_policy(REPLICAS)
    policy.eject("replica-0")
    policy.set_replicas(REPLICAS)
    assert "replica-0" not in policy.replicas and policy.ejected == {"replica-0"}
    policy.set_replicas(REPLICAS[1:])
    assert not policy.ejected
    policy.set_replicas(REPLICAS)
    assert "replica-0" in policy.replicas


def test_the_last_replica_on_the_ring_is_never_ejected() -> None:
    policy = make_policy(["a", "b"])
    assert policy.eject("a")
    assert not policy.eject("b")
    assert policy.replicas == {"b"}
    assert not policy.eject("unknown") and not policy.readmit("b")


def test_if_every_remaining_member_is_out_all_come_back() -> None:
    policy = make_policy(["a", "b"])
    policy.eject("a")
    policy.on_replica_removed("b")  # the one left on the ring died
    assert policy.replicas == {"a"} and not policy.ejected
