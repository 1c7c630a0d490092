"""The router's KV-event subscriber on loopback ZMQ, and the follower that keeps one
per replica and applies their batches to the policy."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
import pytest

from router import AppliedEvents, CacheAwarePolicy, PolicyConfig, RouteRequest
from router.kv_events import BlockRemoved, BlockStored, KVEventBatch
from serving.routing.kv_events import KVEventFollower, KVEventSource, KVEventSubscriber

ENCODER = msgspec.msgpack.Encoder()


def make_stored(hashes: list[int], *, block_size: int = 4) -> BlockStored:
    return BlockStored(block_hashes=list(hashes), parent_block_hash=None,
                       token_ids=list(range(block_size * len(hashes))), block_size=block_size,
                       lora_id=None, medium="GPU", lora_name=None)


def make_batch(*events: BlockStored | BlockRemoved) -> KVEventBatch:
    return KVEventBatch(ts=1.0, events=list(events))


def _publish_until_received(pub: object, payload: bytes, done: threading.Event) -> int:
    """Publish with consecutive sequence numbers until ``done``; return the next seq.

    PUB/SUB drops messages until the subscription has propagated ("slow
    joiner"), so keep sending; once one arrives, later ones arrive in order.
    """
    seq = 0
    deadline = time.monotonic() + 5.0
    while not done.is_set() and time.monotonic() < deadline:
        pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])  # type: ignore[attr-defined]
        seq += 1
        done.wait(0.05)
    assert done.is_set(), "subscriber never connected"
    return seq


def test_subscriber_delivers_batches_and_counts_gaps() -> None:
    zmq = pytest.importorskip("zmq")
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    received: list[KVEventBatch] = []
    gaps: list[tuple[int, int]] = []
    got_first = threading.Event()

    def on_batch(batch: KVEventBatch) -> None:
        received.append(batch)
        got_first.set()

    subscriber = KVEventSubscriber(
        f"tcp://127.0.0.1:{port}",
        on_batch,
        on_gap=lambda expected, seen: gaps.append((expected, seen)),
        poll_interval_s=0.01,
    )
    payload = ENCODER.encode(make_batch(make_stored([1])))
    try:
        with subscriber:
            next_seq = _publish_until_received(pub, payload, got_first)
            pub.send_multipart([b"", (next_seq + 4).to_bytes(8, "big"), payload])  # skips 4
            pub.send_multipart([b"", (next_seq + 5).to_bytes(8, "big"), b"garbage"])
            pub.send_multipart([b"only-one-frame"])
            deadline = time.monotonic() + 5
            while subscriber.decode_errors < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        pub.close(linger=0)
    assert received[0] == make_batch(make_stored([1]))
    assert gaps == [(next_seq, next_seq + 4)]
    assert subscriber.decode_errors == 2
    assert subscriber._thread is not None and not subscriber._thread.is_alive()


def test_subscriber_survives_a_failing_callback() -> None:
    zmq = pytest.importorskip("zmq")
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    calls = threading.Event()

    def on_batch(batch: KVEventBatch) -> None:
        calls.set()
        raise RuntimeError("boom")

    subscriber = KVEventSubscriber(f"tcp://127.0.0.1:{port}", on_batch, poll_interval_s=0.01)
    try:
        with subscriber:
            _publish_until_received(pub, ENCODER.encode(make_batch()), calls)
            assert subscriber._thread is not None and subscriber._thread.is_alive()
    finally:
        pub.close(linger=0)
    assert subscriber.callback_errors >= 1


def test_the_follower_keeps_one_subscriber_per_live_replica_and_applies_its_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    stopped: list[str] = []

    class FakeSubscriber:
        def __init__(self, endpoint: str, on_batch,  # type: ignore[no-untyped-def]
                     *, replay_endpoint: str | None) -> None:
            self.endpoint, self.on_batch = endpoint, on_batch
            self.replay_endpoint = replay_endpoint

        def start(self) -> None:
            started.append(self.endpoint)

        def stop(self) -> None:
            stopped.append(self.endpoint)

    import serving.routing.kv_events as module

    monkeypatch.setattr(module, "KVEventSubscriber", FakeSubscriber)
    policy = CacheAwarePolicy(PolicyConfig(block_size=4), replicas=["a", "b"])
    applied: list[AppliedEvents] = []
    follower = KVEventFollower(policy, applied.append)
    a_source = KVEventSource("tcp://a")  # a replica that reports no replay endpoint
    b_source = KVEventSource("tcp://b", replay_endpoint="tcp://b-replay")
    follower.sync([("a", a_source), ("b", None)])  # b has not reported an endpoint yet
    follower.sync([("a", a_source), ("b", b_source)])
    assert started == ["tcp://a", "tcp://b"]
    request = RouteRequest(token_ids=tuple(range(8)))
    hashes = [int(h) for h in policy.block_hashes(request)]
    b: Any = follower._subscribers["b"]
    assert b.replay_endpoint == "tcp://b-replay"
    assert follower._subscribers["a"].replay_endpoint is None
    b.on_batch(make_batch(make_stored(hashes)))
    assert policy.placement(request).holders == {"b"}
    b.on_batch(make_batch(BlockRemoved(block_hashes=hashes[1:], medium="GPU")))
    assert [a.stored_blocks for a in applied] == [2, 0] and follower.blocks_removed() == {"b": 1}
    follower.sync([("a", a_source)])  # b left
    assert stopped == ["tcp://b"]


def test_the_router_follows_the_endpoints_each_replica_advertises() -> None:
    from ray.serve._private.test_utils import FakeRunningReplica

    from serving.contract import KV_EVENTS_REPLAY_STATS_KEY, KV_EVENTS_STATS_KEY
    from serving.routing.replica_stats import kv_event_sources

    class StatsReplica(FakeRunningReplica):
        def __init__(self, unique_id: str, stats: dict[str, Any]) -> None:
            super().__init__(unique_id)
            self.stats = stats

        @property
        def routing_stats(self) -> dict[str, Any]:
            return self.stats

    replicas = [
        StatsReplica("new", {KV_EVENTS_STATS_KEY: "tcp://10.0.0.5:5600",
                             KV_EVENTS_REPLAY_STATS_KEY: "tcp://10.0.0.5:5664"}),
        StatsReplica("old", {KV_EVENTS_STATS_KEY: "tcp://10.0.0.6:5600"}),  # no replay
        StatsReplica("joining", {}),
    ]
    assert kv_event_sources(replicas) == [
        ("new", KVEventSource("tcp://10.0.0.5:5600", replay_endpoint="tcp://10.0.0.5:5664")),
        ("old", KVEventSource("tcp://10.0.0.6:5600")),
        ("joining", None),
    ]
