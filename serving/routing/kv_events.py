"""The engines' KV events, followed by the router: a ZMQ subscriber per replica.

Each vLLM engine publishes its cache's stores and evictions on a ZMQ PUB endpoint,
which its replica reports in Serve's routing stats (serving/replica/server.py). The
router subscribes to every replica that reported one (``KVEventFollower``), applies
each decoded batch to the routing core's ownership index (``FleetEvents.on_kv_events``,
router/kv_events.py holds the wire structs and ``decode_batch``), counts what it did
(serving/routing/metrics.py), and stops a replica's subscriber when it leaves.

``KVEventSubscriber`` runs one daemon thread per engine endpoint; ``zmq`` is imported
only when a subscriber starts. Subscribing happens on Serve's router event loop (a
lock keeps two hooks from subscribing one replica twice); batches are applied on the
subscribers' threads, which the policy's lock makes safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from router import AppliedEvents, FleetEvents, KVEventBatch, decode_batch

logger = logging.getLogger("ray.serve")


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

    def sync(self, live: Iterable[tuple[str, str | None]]) -> None:
        """Follow exactly these replicas: ``(replica id, endpoint or None)`` each."""
        live = list(live)
        ids = {rid for rid, _ in live}
        for rid in list(self._subscribers):
            if rid not in ids:
                self.stop(rid)
        for rid, endpoint in live:
            self.follow(rid, endpoint)

    def follow(self, rid: str, endpoint: str | None) -> None:
        """Subscribe to the replica's endpoint, once; None: not reported yet."""
        if rid in self._subscribers or not endpoint:
            return
        with self._lock:
            if rid in self._subscribers:
                return
            sub = KVEventSubscriber(endpoint, lambda batch, rid=rid: self._apply(rid, batch))
            sub.start()
            self._subscribers[rid] = sub
        logger.info("cacheroute: following KV events of replica %s at %s", rid, endpoint)

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
