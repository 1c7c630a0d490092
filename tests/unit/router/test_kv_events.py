"""KV-event wire structs, decoding, and applying batches to the ownership index (the ZMQ
subscriber is the serving layer's: tests/unit/serving/routing/test_kv_events.py)."""

from __future__ import annotations

import msgspec
import pytest
from router_factories import make_batch, make_hashes, make_index, make_removed, make_stored

from router.hashing import PrefixHasher
from router.kv_events import (
    AllBlocksCleared,
    AppliedEvents,
    BlockRemoved,
    KVEventBatch,
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
