"""vLLM KV-cache events: wire structs, applying them to the ownership index, and a subscriber.

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

Cost: one msgspec decode (C) per batch, then O(hashes) index updates.
``KVEventSubscriber`` runs one daemon thread per engine endpoint; ``zmq`` is
imported only when a subscriber starts, so the routing core loads without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from router.hashing import to_block_hash
from router.ownership import OwnershipIndex

logger = logging.getLogger(__name__)

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


class KVEventSubscriber:
    """Subscribes to one engine's ZMQ PUB endpoint and hands decoded batches to a callback.

    ``on_batch`` runs on the subscriber's thread. ``on_gap(expected, received)``
    is called when sequence numbers skip (messages dropped past the high-water
    mark) or restart (``received < expected``: the publisher, hence usually the
    engine and its cache, restarted). Without replay the index then relies on
    TTLs; a caller may ``clear`` the replica on a restart. Undecodable payloads
    and callback errors are counted (and the latter logged) but never end the
    thread: one bad batch must not blind the router to an engine for good.
    """

    def __init__(
        self,
        endpoint: str,
        on_batch: Callable[[KVEventBatch], None],
        *,
        topic: str = "",
        on_gap: Callable[[int, int], None] | None = None,
        poll_interval_s: float = 0.1,
        name: str | None = None,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.endpoint = endpoint
        self._on_batch = on_batch
        self._on_gap = on_gap
        self._topic = topic.encode("utf-8")
        self._poll_interval_ms = max(1, int(poll_interval_s * 1000))
        self._name = name or f"kv-events:{endpoint}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_seq: int | None = None
        # Plain counters, written by the subscriber thread only.
        self.received_batches = 0
        self.decode_errors = 0
        self.callback_errors = 0
        self.gaps = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("subscriber already started")
        import zmq  # noqa: PLC0415 (lazy: only subscribers need pyzmq)

        # Connect on the caller's thread so an invalid endpoint fails loudly here.
        socket: Any = zmq.Context.instance().socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, self._topic)
        socket.connect(self.endpoint)
        self._thread = threading.Thread(
            target=self._run, args=(socket,), name=self._name, daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Signal the thread to exit and wait up to ``timeout_s`` for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> KVEventSubscriber:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, socket: Any) -> None:
        try:
            while not self._stop.is_set():
                if not socket.poll(self._poll_interval_ms):
                    continue
                frames = socket.recv_multipart()
                self._handle(frames)
        finally:
            socket.close(linger=0)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            self.decode_errors += 1
            return
        _topic, seq_bytes, payload = frames
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        if self._next_seq is not None and seq != self._next_seq:
            self.gaps += 1
            if self._on_gap is not None:
                try:
                    self._on_gap(self._next_seq, seq)
                except Exception:
                    self.callback_errors += 1
                    logger.exception("KV event gap callback failed for %s", self.endpoint)
        self._next_seq = seq + 1
        try:
            batch = decode_batch(payload)
        except msgspec.DecodeError:  # includes ValidationError
            self.decode_errors += 1
            return
        self.received_batches += 1
        try:
            self._on_batch(batch)
        except Exception:
            self.callback_errors += 1
            logger.exception("KV event callback failed for %s", self.endpoint)
