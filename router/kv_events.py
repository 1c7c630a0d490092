"""vLLM KV-cache events: wire structs, decoding, and applying them to the ownership index.

Wire format (vLLM 0.32, ``vllm/distributed/kv_events.py``), mirrored here field for
field so ``msgspec`` decodes real engine payloads without importing vLLM:

* ``KVEventBatch`` is an *array-like* struct ``[ts, events, data_parallel_rank]``
  (msgspec keeps a trailing None in arrays; a missing rank also decodes).
* Each event is a *map* struct tagged with its class name under the key
  ``"type"`` (``tag=True``; not array-like), with ``omit_defaults=True``.
* Block hashes are 64-bit ints by default, or 32-byte digests when the engine
  runs with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``; ``to_block_hash``
  normalises both.
* The ZMQ publisher sends multipart ``(topic, seq as 8-byte big-endian, payload)``.

``apply_batch`` maps BlockStored -> ``confirm``, BlockRemoved -> ``forget``,
AllBlocksCleared -> ``clear``. It keeps only the GPU tier (``medium`` None or
"GPU") and KV-cache group 0: a CPU-offload eviction or a sliding-window group's
eviction does not mean the full-attention GPU prefix is gone. A BlockStored with
another ``block_size`` hashes at a different granularity than the router, so it
is counted as skipped (a misconfiguration to surface in metrics) and ignored.

Cost: one msgspec decode (C) per batch, then O(hashes) index updates. The ZMQ
subscriber that receives the payloads is the serving layer's
(serving/routing/kv_events.py): the core holds no threads and no sockets.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from router.hashing import to_block_hash
from router.ownership import OwnershipIndex

# Same union as vLLM's ExternalBlockHash.
ExternalBlockHash = bytes | int


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """Base of the tagged event union; the tag is the class name, as in vLLM."""


class BlockStored(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


_DECODER: Final = msgspec.msgpack.Decoder(type=KVEventBatch)
# Media of the engine's primary cache: vLLM's BlockPool labels it "GPU" even
# on the CPU build; "CPU"/"STORAGE" are offload tiers.
DEFAULT_MEDIA: Final[frozenset[str | None]] = frozenset({None, "GPU"})


def decode_batch(payload: bytes) -> KVEventBatch:
    """Decode one published payload; raises ``msgspec.DecodeError`` on bad input."""
    return _DECODER.decode(payload)


@dataclass(frozen=True, slots=True)
class AppliedEvents:
    """What one batch did to the index; counts for telemetry."""

    stored_blocks: int = 0
    removed_blocks: int = 0
    cleared: int = 0
    # Events ignored: other medium, other KV-cache group, other block size.
    skipped_events: int = 0


def apply_batch(
    index: OwnershipIndex,
    replica: str,
    batch: KVEventBatch,
    *,
    block_size: int,
    media: Collection[str | None] = DEFAULT_MEDIA,
) -> AppliedEvents:
    """Apply ``replica``'s event batch to ``index`` in order (order matters: a block
    can be removed and stored again within one batch)."""
    stored = removed = cleared = skipped = 0
    for event in batch.events:
        if isinstance(event, AllBlocksCleared):
            index.clear(replica)
            cleared += 1
        elif event.medium not in media or event.group_idx not in (None, 0):
            skipped += 1
        elif isinstance(event, BlockStored):
            if event.block_size != block_size:
                skipped += 1
                continue
            index.confirm(replica, [to_block_hash(h) for h in event.block_hashes])
            stored += len(event.block_hashes)
        else:
            index.forget(replica, [to_block_hash(h) for h in event.block_hashes])
            removed += len(event.block_hashes)
    return AppliedEvents(
        stored_blocks=stored, removed_blocks=removed, cleared=cleared, skipped_events=skipped
    )
