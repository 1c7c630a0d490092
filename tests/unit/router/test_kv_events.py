"""KV-event wire structs, applying batches, and the ZMQ subscriber on loopback."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
from router_factories import make_batch, make_hashes, make_index, make_removed, make_stored

from router.hashing import PrefixHasher
from router.kv_events import (
    AllBlocksCleared,
    AppliedEvents,
    BlockRemoved,
    KVEventBatch,
    KVEventSubscriber,
    apply_batch,
    decode_batch,
)
from router.ownership import PrefixMatch

ENCODER = msgspec.msgpack.Encoder()


def test_round_trip_of_every_event_kind() -> None:
    batch = KVEventBatch(
        ts=12.5,
        events=[
            make_stored([1, 2**64 - 1], extra_keys=[("salt",), None], group_idx=0),
            make_removed([b"\x00" * 32]),
            AllBlocksCleared(),
        ],
        data_parallel_rank=3,
    )
    assert decode_batch(ENCODER.encode(batch)) == batch


def test_wire_shape_is_vllms() -> None:
    # Batch: array [ts, events, dp_rank]; events: maps tagged by class name
    # under "type", with default-valued fields omitted.
    raw = msgspec.msgpack.decode(ENCODER.encode(make_batch(make_stored([7]), AllBlocksCleared())))
    assert raw[0] == 1.0 and raw[2] is None
    stored, cleared = raw[1]
    assert stored["type"] == "BlockStored" and cleared == {"type": "AllBlocksCleared"}
    assert set(stored) == {
        "type",
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
    }


def test_unknown_fields_and_a_missing_rank_are_accepted() -> None:
    payload = msgspec.msgpack.encode(
        [1.0, [{"type": "BlockRemoved", "block_hashes": [5], "medium": None, "future": 1}]]
    )
    event = decode_batch(payload).events[0]
    assert isinstance(event, BlockRemoved) and event.block_hashes == [5]


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_batch(b"\x93not msgpack")


def test_apply_batch_stores_removes_and_clears_in_order() -> None:
    index = make_index()
    hashes = PrefixHasher(4).block_hashes(list(range(12)))
    applied = apply_batch(
        index,
        "a",
        make_batch(make_stored(hashes), make_removed(hashes[2:]), make_stored([99])),
        block_size=4,
    )
    assert applied == AppliedEvents(stored_blocks=4, removed_blocks=1, cleared=0, skipped_events=0)
    assert index.longest_prefix(hashes) == PrefixMatch(frozenset({"a"}), 2)
    apply_batch(index, "a", make_batch(AllBlocksCleared()), block_size=4)
    assert len(index) == 0


def test_digest_form_hashes_match_int_form() -> None:
    index = make_index()
    digests = PrefixHasher(4).digests(list(range(8)))
    apply_batch(index, "a", make_batch(make_stored(digests)), block_size=4)
    assert index.longest_prefix(PrefixHasher(4).block_hashes(list(range(8)))).matched_blocks == 2


def test_other_media_groups_and_block_sizes_are_skipped() -> None:
    index = make_index()
    applied = apply_batch(
        index,
        "a",
        make_batch(
            make_stored([1], medium="CPU"),
            make_stored([2], group_idx=1),
            make_stored([3], block_size=16),
            make_removed([4], medium="CPU"),
            make_stored([5], medium=None),
        ),
        block_size=4,
    )
    assert applied.skipped_events == 4 and applied.stored_blocks == 1
    assert index.owners(make_hashes(5)[0]) == {"a"} and len(index) == 1


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
