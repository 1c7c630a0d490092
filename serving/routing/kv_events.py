"""The engines' KV events, followed by the router: a ZMQ subscriber per replica.

Each vLLM engine publishes its cache's stores and evictions on a ZMQ PUB endpoint,
and answers replay requests on a second one (a ROUTER socket: given a sequence
number, it sends every batch it still buffers from there on, then an end marker);
its replica reports both in Serve's routing stats (serving/replica/server.py,
serving/replica/kv_endpoint.py). The
router subscribes to every replica that reported one (``KVEventFollower``), applies
each decoded batch to the routing core's ownership index (``FleetEvents.on_kv_events``,
router/kv_events.py holds the wire structs and ``decode_batch``), counts what it did
(serving/routing/metrics.py), and stops a replica's subscriber when it leaves.

PUB/SUB delivers only what is published after the subscription reached the engine,
so a router that starts (a new ingress, or one restarted) would know nothing of the
blocks the engines already hold until TTLs and its own decisions taught it. With a
replay endpoint, a subscriber therefore first asks for every batch from sequence 0
and applies them in order before the live ones; it asks again from the first missing
sequence number when live batches skip some (dropped past the high-water mark, or
missed while the connection was down), and from 0 when the numbers restart (a new
publisher). A live batch the replay already delivered (same number, same bytes: it
waited on the SUB socket while the replay ran) is dropped, so each batch is applied
once, in sequence order.

``KVEventSubscriber`` runs one daemon thread per engine endpoint; ``zmq`` is imported
only when a subscriber starts. Subscribing happens on Serve's router event loop (a
lock keeps two hooks from subscribing one replica twice); batches are applied on the
subscribers' threads, which the policy's lock makes safe.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from router import AppliedEvents, FleetEvents, KVEventBatch, decode_batch

logger = logging.getLogger("ray.serve")

# vLLM's replay answer ends with this sequence number (ZmqEventPublisher.END_SEQ).
_END_OF_REPLAY = -1


@dataclass(frozen=True)
class KVEventSource:
    """Where a replica's engine publishes its KV events, as its routing stats say."""

    endpoint: str
    replay_endpoint: str | None = None
    """None: a replica that reports none (the router follows it without replay)."""


class KVEventFollower:
    """One subscriber per replica that reported an endpoint, feeding ``policy``."""

    def __init__(self, policy: FleetEvents,
                 on_applied: Callable[[AppliedEvents], None]) -> None:
        self._policy = policy
        self._on_applied = on_applied
        self._subscribers: dict[str, KVEventSubscriber] = {}
        self._lock = threading.Lock()
        # KV blocks each replica's engine evicted, from its KV events (telemetry).
        self._blocks_removed: dict[str, int] = {}

    def blocks_removed(self) -> dict[str, int]:
        return dict(self._blocks_removed)

    def sync(self, live: Iterable[tuple[str, KVEventSource | None]]) -> None:
        """Follow exactly these replicas: ``(replica id, source or None)`` each."""
        live = list(live)
        ids = {rid for rid, _ in live}
        for rid in list(self._subscribers):
            if rid not in ids:
                self.stop(rid)
        for rid, source in live:
            self.follow(rid, source)

    def follow(self, rid: str, source: KVEventSource | None) -> None:
        """Subscribe to the replica's endpoints, once; None: not reported yet."""
        if rid in self._subscribers or source is None:
            return
        with self._lock:
            if rid in self._subscribers:
                return
            sub = KVEventSubscriber(source.endpoint,
                                    lambda batch, rid=rid: self._apply(rid, batch),
                                    replay_endpoint=source.replay_endpoint)
            sub.start()
            self._subscribers[rid] = sub
        logger.info("cacheroute: following KV events of replica %s at %s (replay: %s)", rid,
                    source.endpoint, source.replay_endpoint or "none")

    def stop(self, rid: str) -> None:
        with self._lock:
            sub = self._subscribers.pop(rid, None)
        if sub is not None:
            sub.stop()

    def _apply(self, rid: str, batch: KVEventBatch) -> None:
        applied = self._policy.on_kv_events(rid, batch)
        if applied.removed_blocks:
            self._blocks_removed[rid] = self._blocks_removed.get(rid, 0) + applied.removed_blocks
        self._on_applied(applied)


class KVEventSubscriber:
    """Subscribes to one engine's ZMQ PUB endpoint and hands decoded batches to a callback.

    ``on_batch`` runs on the subscriber's thread. With ``replay_endpoint`` the
    subscriber first replays the engine's buffered batches, and fills skips from
    it (module docstring). ``on_gap(expected, received)`` is called when sequence
    numbers skip and the replay cannot fill them (no replay endpoint, no answer
    within ``replay_timeout_s``, or batches already gone from the engine's buffer)
    or restart (``received < expected``: the publisher, hence usually the engine
    and its cache, restarted). The index then relies on TTLs; a caller may
    ``clear`` the replica on a restart. Undecodable payloads and callback errors
    are counted (and the latter logged) but never end the thread: one bad batch
    must not blind the router to an engine for good.
    """

    def __init__(
        self,
        endpoint: str,
        on_batch: Callable[[KVEventBatch], None],
        *,
        replay_endpoint: str | None = None,
        topic: str = "",
        on_gap: Callable[[int, int], None] | None = None,
        poll_interval_s: float = 0.1,
        replay_timeout_s: float = 2.0,
        name: str | None = None,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if not replay_timeout_s > 0:
            raise ValueError(f"replay_timeout_s must be > 0, got {replay_timeout_s}")
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self._on_batch = on_batch
        self._on_gap = on_gap
        self._topic = topic.encode("utf-8")
        self._poll_interval_ms = max(1, int(poll_interval_s * 1000))
        # The longest wait for the replay's next message: the engine answers between
        # two publications, so an engine that takes longer is unreachable or gone.
        self._replay_timeout_ms = max(1, int(replay_timeout_s * 1000))
        self._name = name or f"kv-events:{endpoint}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_seq: int | None = None
        # The batches the last replay applied (sequence number -> payload digest): their
        # live copies, queued on the SUB socket while it ran, are dropped. Compared by
        # content, so a restarted publisher's batch of the same number is not.
        self._replayed: dict[int, bytes] = {}
        # Plain counters, written by the subscriber thread only.
        self.received_batches = 0
        self.replayed_batches = 0
        self.replay_failures = 0
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
            # SUB connected first (start), so what is published meanwhile waits there.
            self._replay_from(0)
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
        if self._replayed:
            if self._replayed.get(seq) == _digest(payload):
                return  # the replay applied it already
            if self._next_seq is None or seq >= self._next_seq:
                self._replayed = {}  # past the replay: no copy can follow
        expected = self._next_seq
        if expected is not None and seq != expected and self.replay_endpoint is not None:
            if seq < expected:  # a new publisher: its numbering starts again
                self._report_gap(expected, seq)
                self._next_seq = None
                self._replay_from(0)
            else:
                self._replay_from(expected)
            if self._next_seq is not None and seq < self._next_seq:
                return  # the replay applied it
        self._accept(seq, payload)

    def _replay_from(self, start_seq: int) -> None:
        """Apply the engine's buffered batches from ``start_seq`` that are not applied
        yet, in order, until its end marker; give up after ``replay_timeout_s`` without
        a message (what arrived until then stays applied)."""
        if self.replay_endpoint is None:
            return
        import zmq  # noqa: PLC0415 (lazy: only subscribers need pyzmq)

        socket: Any = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        # vLLM sends its whole buffer at once and its ROUTER drops what does not fit the
        # pipe: take it all in (bounded by the engine's buffer_steps), never push back.
        socket.setsockopt(zmq.RCVHWM, 0)
        replayed: dict[int, bytes] = {}
        try:
            socket.connect(self.replay_endpoint)
            # DEALER to vLLM's ROUTER: an empty delimiter, then the first sequence number.
            socket.send_multipart([b"", start_seq.to_bytes(8, "big")])
            while not self._stop.is_set():
                if not socket.poll(self._replay_timeout_ms):
                    self.replay_failures += 1
                    logger.warning("cacheroute: no KV-event replay from %s within %.1f s",
                                   self.replay_endpoint, self._replay_timeout_ms / 1000)
                    return
                frames = socket.recv_multipart()
                if len(frames) != 4:
                    self.decode_errors += 1
                    continue
                _delimiter, _topic, seq_bytes, payload = frames
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                if seq == _END_OF_REPLAY:
                    return
                if self._next_seq is not None and seq < self._next_seq:
                    continue
                self.replayed_batches += 1
                replayed[seq] = _digest(payload)
                self._accept(seq, payload)
        finally:
            socket.close(linger=0)
            self._replayed = replayed

    def _accept(self, seq: int, payload: bytes) -> None:
        """Apply the batch numbered ``seq``, reporting the numbers skipped before it."""
        if self._next_seq is not None and seq != self._next_seq:
            self._report_gap(self._next_seq, seq)
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

    def _report_gap(self, expected: int, received: int) -> None:
        self.gaps += 1
        if self._on_gap is not None:
            try:
                self._on_gap(expected, received)
            except Exception:
                self.callback_errors += 1
                logger.exception("KV event gap callback failed for %s", self.endpoint)


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()
