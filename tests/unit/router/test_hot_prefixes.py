"""The hot-prefix table: decay, bound, arc selection on a real ring, determinism; and
the policy's use of it (counting decisions, naming a joiner's arc, learning an owner)."""

from __future__ import annotations

import pytest
from router_factories import FakeClock, make_policy, make_replica_ids, make_request

from router import HashRing, HotPrefixTracker, Outcome, PrefixHasher, RouteRequest

BLOCK = 4
HASHER = PrefixHasher(BLOCK)


def make_tracker(capacity: int = 8, *, max_blocks: int = 64,
                 half_life_s: float = 60.0) -> HotPrefixTracker:
    return HotPrefixTracker(capacity=capacity, block_size=BLOCK, max_blocks=max_blocks,
                            half_life_s=half_life_s)


def observe(tracker: HotPrefixTracker, tokens: tuple[int, ...], now: float,
            **tenant: str) -> int:
    hashes = HASHER.block_hashes(tokens, cache_salt=tenant.get("cache_salt"))
    tracker.observe(hashes[0], tokens, hashes, now=now, **tenant)
    return hashes[0]


def prompt(head: int, tail: int = 0, *, blocks: int = 3, tail_tokens: int = 6) -> tuple[int, ...]:
    """``blocks`` shared blocks starting at token ``head``, then a request's own tail."""
    return (tuple(range(head, head + blocks * BLOCK))
            + tuple(range(10**6 + tail * 100, 10**6 + tail * 100 + tail_tokens)))


def test_the_replayed_prefix_is_the_whole_blocks_every_request_of_the_key_shares() -> None:
    tracker = make_tracker()
    key = observe(tracker, prompt(0, tail=1), now=0.0)
    # Alone, the prefix is the request's own whole blocks (its tail's first block included).
    assert tracker.hottest(1, now=0.0)[0].blocks == 4
    observe(tracker, prompt(0, tail=2), now=1.0)
    (hot,) = tracker.hottest(5, now=1.0)
    assert hot.ring_key == key
    assert hot.blocks == 3
    assert hot.token_ids == prompt(0)[:3 * BLOCK]


def test_the_prefix_is_cut_to_max_blocks() -> None:
    tracker = make_tracker(max_blocks=2)
    observe(tracker, prompt(0, blocks=5), now=0.0)
    assert tracker.hottest(1, now=0.0)[0].token_ids == tuple(range(2 * BLOCK))


def test_the_tenant_is_kept_to_rebuild_the_request() -> None:
    tracker = make_tracker()
    plain = observe(tracker, prompt(0), now=0.0)
    salted = observe(tracker, prompt(0), now=0.0, cache_salt="tenant-a")
    assert plain != salted  # the salt changes the first block's hash, so the key
    by_key = {h.ring_key: h for h in tracker.hottest(5, now=0.0)}
    assert by_key[salted].cache_salt == "tenant-a"
    assert by_key[plain].cache_salt is None


def test_heat_halves_every_half_life_and_recent_beats_old() -> None:
    tracker = make_tracker(half_life_s=10.0)
    old = observe(tracker, prompt(0), now=0.0)
    for _ in range(3):
        observe(tracker, prompt(0), now=0.0)
    assert tracker.hottest(1, now=10.0)[0].heat == pytest.approx(2.0)
    assert tracker.hottest(1, now=20.0)[0].heat == pytest.approx(1.0)
    # Two requests now outweigh four made three half-lives ago (4/8 = 0.5 < 2).
    new = observe(tracker, prompt(100), now=30.0)
    observe(tracker, prompt(100), now=30.0)
    assert [h.ring_key for h in tracker.hottest(2, now=30.0)] == [new, old]
    assert tracker.hottest(2, now=30.0)[1].heat == pytest.approx(0.5)


def test_heat_survives_the_rebase_of_the_reference_time() -> None:
    # 10_000 half-lives would overflow 2**exponent without moving the reference time.
    tracker = make_tracker(half_life_s=1.0)
    for step in range(0, 10_001, 250):
        observe(tracker, prompt(0), now=float(step))
    (hot,) = tracker.hottest(1, now=10_000.0)
    assert 1.0 <= hot.heat < 2.0


def test_the_table_keeps_the_hottest_within_twice_its_capacity() -> None:
    tracker = make_tracker(capacity=4)
    hot_keys = []
    for head in range(4):  # four hot keys, three requests each
        for _ in range(3):
            key = observe(tracker, prompt(head * 1000), now=0.0)
        hot_keys.append(key)
    for head in range(4, 40):  # a stream of one-off keys
        observe(tracker, prompt(head * 1000), now=1.0)
        assert len(tracker) < 8
    assert {h.ring_key for h in tracker.hottest(4, now=1.0)} == set(hot_keys)


def test_arc_of_names_only_the_keys_whose_ring_home_is_the_replica() -> None:
    replicas = make_replica_ids(4)
    ring = HashRing(replicas)
    tracker = make_tracker(capacity=1000)
    keys = [observe(tracker, prompt(head * 1000), now=0.0) for head in range(400)]
    share = {r: len(tracker.arc_of(r, ring, 1000, now=0.0)) for r in replicas}
    assert sum(share.values()) == len(keys)
    for replica in replicas:
        arc = tracker.arc_of(replica, ring, 1000, now=0.0)
        assert all(ring.owner(h.ring_key) == replica for h in arc)
        # About 1/N of the keys each (virtual nodes keep a share within ~10% of 1/N).
        assert 0.6 * len(keys) / 4 < len(arc) < 1.4 * len(keys) / 4
    assert tracker.arc_of("not-on-the-ring", ring, 10, now=0.0) == []


def test_a_joining_replica_takes_the_arc_that_arc_of_names() -> None:
    ring = HashRing(make_replica_ids(3))
    tracker = make_tracker(capacity=1000)
    keys = [observe(tracker, prompt(head * 1000), now=0.0) for head in range(300)]
    before = {k: ring.owner(k) for k in keys}
    ring.add("joiner")
    arc = {h.ring_key for h in tracker.arc_of("joiner", ring, 1000, now=0.0)}
    assert arc == {k for k in keys if ring.owner(k) == "joiner"}
    assert all(before[k] != "joiner" for k in arc)  # every one of them moved to it


def test_arc_of_is_hottest_first_limited_and_deterministic() -> None:
    ring = HashRing(["a"])
    def build() -> HotPrefixTracker:
        tracker = make_tracker(capacity=100)
        for head in range(20):
            for _ in range(head % 5 + 1):
                observe(tracker, prompt(head * 1000), now=float(head))
        return tracker
    first = build().arc_of("a", ring, 7, now=20.0)
    assert len(first) == 7
    assert [h.heat for h in first] == sorted((h.heat for h in first), reverse=True)
    assert first == build().arc_of("a", ring, 7, now=20.0)
    assert build().arc_of("a", ring, 0, now=20.0) == []


def test_the_tracker_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        HotPrefixTracker(capacity=0, block_size=4, max_blocks=1, half_life_s=1.0)
    with pytest.raises(ValueError):
        HotPrefixTracker(capacity=1, block_size=4, max_blocks=1, half_life_s=float("inf"))


# --- the policy -----------------------------------------------------------------------


def test_the_policy_tracks_nothing_unless_asked() -> None:
    policy = make_policy()
    policy.select(make_request(12), {})
    assert policy.hot_prefixes_of("a", 10) == []


def test_a_joining_replica_is_named_its_hot_prefixes_and_owns_them_once_learned() -> None:
    clock = FakeClock()
    replicas = make_replica_ids(3)
    policy = make_policy(replicas, clock=clock, hot_prefix_capacity=1000)
    requests = [make_request(tokens=prompt(head * 1000, tail=1)) for head in range(200)]
    for request in requests:
        policy.select(request, {})
    policy.set_replicas([*replicas, "joiner"])
    arc = policy.hot_prefixes_of("joiner", 1000)
    assert arc  # it took over about a quarter of the keys
    for hot in arc:
        request = RouteRequest(token_ids=hot.token_ids, cache_salt=hot.cache_salt)
        # Before the prewarm its prefix still goes to the old owner...
        assert policy.select(request, {}).replica_id != "joiner"
        assert policy.learn("joiner", request) == hot.blocks
        # ...after it, the joiner is an owner and, first on the ring, wins the tie.
        decision = policy.select(request, {})
        assert (decision.replica_id, decision.outcome) == ("joiner", Outcome.OWNER_HIT)


def test_learn_refuses_a_replica_that_left() -> None:
    policy = make_policy(hot_prefix_capacity=10)
    assert policy.learn("gone", make_request(12)) == 0
    assert policy.learn("a", make_request(12)) == 3


def test_sessions_are_tracked_by_their_session_key() -> None:
    policy = make_policy(make_replica_ids(4), hot_prefix_capacity=10)
    policy.select(make_request(tokens=prompt(0, tail=1), session_id="s1"), {})
    policy.select(make_request(tokens=prompt(0, tail=1) + prompt(500), session_id="s1"), {})
    home = policy.select(make_request(tokens=prompt(0, tail=2), session_id="s1"), {}).replica_id
    (hot,) = policy.hot_prefixes_of(home, 10)
    assert hot.token_ids == prompt(0)[:3 * BLOCK]
