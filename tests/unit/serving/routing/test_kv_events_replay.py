"""The KV-event subscriber's replay, on loopback ZMQ: a router that joins late first
replays what the engine buffered, fills skipped batches from the replay, starts over
on a new publisher, and follows live batches alone when the replay does not answer.

Each batch's ``ts`` is its sequence number (plus a tenth per publisher restart, as a
real engine's clock would differ), so a test reads which batches were applied in which
order. The contract test runs the pinned vLLM's own publisher.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from router.kv_events import KVEventBatch
from serving.replica.kv_endpoint import node_endpoint
from serving.routing.kv_events import KVEventSubscriber

ENCODER = msgspec.msgpack.Encoder()
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class ReplayingPublisher:
    """vLLM's publisher protocol (PUB, and a ROUTER answering replay requests from its
    buffer), whose live sends a test can drop."""

    def __init__(self, zmq: Any) -> None:
        context = zmq.Context.instance()
        self._pub = context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self._pub.bind_to_random_port('tcp://127.0.0.1')}"
        self._router = context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        port = self._router.bind_to_random_port("tcp://127.0.0.1")
        self.replay_endpoint = f"tcp://127.0.0.1:{port}"
        self._buffer: list[tuple[int, bytes]] = []
        self._restarts = 0
        self._lock = threading.Lock()
        self.replay_requests: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_replays, daemon=True)
        self._thread.start()

    def publish(self, *, live: bool = True) -> int:
        """The next batch (its ``ts`` is its sequence number); dropped unless ``live``."""
        with self._lock:
            seq = len(self._buffer)
            payload = ENCODER.encode(KVEventBatch(ts=seq + self._restarts / 10, events=[]))
            self._buffer.append((seq, payload))
        if live:
            self._pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])
        return seq

    def restart(self) -> None:
        """A new publisher at the same endpoints: numbering and buffer start again."""
        with self._lock:
            self._buffer.clear()
            self._restarts += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pub.close(linger=0)

    def _serve_replays(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._router.poll(10):
                    continue
                client, _empty, start = self._router.recv_multipart()
                start_seq = int.from_bytes(start, "big")
                self.replay_requests.append(start_seq)
                with self._lock:
                    batches = [(s, p) for s, p in self._buffer if s >= start_seq]
                for seq, payload in batches:
                    self._router.send_multipart([client, b"", b"", seq.to_bytes(8, "big"),
                                                 payload])
                self._router.send_multipart([client, b"", b"", END_OF_REPLAY, b""])
        finally:
            self._router.close(linger=0)


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.gaps: list[tuple[int, int]] = []

    def on_batch(self, batch: KVEventBatch) -> None:
        self.seqs.append(int(batch.ts))

    def on_gap(self, expected: int, received: int) -> None:
        self.gaps.append((expected, received))


@pytest.fixture
def publisher() -> Iterator[ReplayingPublisher]:
    zmq = pytest.importorskip("zmq")
    pub = ReplayingPublisher(zmq)
    yield pub
    pub.close()


def _subscribed(publisher: ReplayingPublisher, recorder: Recorder,
                subscriber: KVEventSubscriber) -> int:
    """Publish live batches until one arrives (PUB drops them until the subscription
    reached it); return the sequence number of the first one applied."""
    def arrived() -> bool:
        if not recorder.seqs:
            publisher.publish()
        return bool(recorder.seqs)
    _wait_for(arrived, "the subscription")
    time.sleep(0.1)  # let the batches published meanwhile arrive too
    return recorder.seqs[0]


def test_skipped_batches_are_replayed_in_order_and_applied_once(
        publisher: ReplayingPublisher) -> None:
    recorder = Recorder()
    subscriber = KVEventSubscriber(publisher.endpoint, recorder.on_batch,
                                   replay_endpoint=publisher.replay_endpoint,
                                   on_gap=recorder.on_gap, poll_interval_s=0.01)
    with subscriber:
        first = _subscribed(publisher, recorder, subscriber)
        last = recorder.seqs[-1]
        publisher.publish(live=False)  # dropped (past the high-water mark, say)
        publisher.publish(live=False)
        publisher.publish()  # the skip shows: replay from the first one missing
        final = publisher.publish()
        _wait_for(lambda: recorder.seqs[-1:] == [final], "the batches after the skip")
    # On joining from 0 (and maybe again while joining), then from the first one missing.
    assert publisher.replay_requests[0] == 0 and publisher.replay_requests[-1] == last + 1
    assert recorder.seqs == list(range(first, final + 1))
    # The two batches never sent live are there, each once, in order: from the replay.
    assert recorder.gaps == []


def test_a_subscriber_that_joins_late_first_replays_the_buffered_batches(
        publisher: ReplayingPublisher) -> None:
    for _ in range(3):
        publisher.publish()  # before anyone subscribed: PUB drops them
    recorder = Recorder()
    subscriber = KVEventSubscriber(publisher.endpoint, recorder.on_batch,
                                   replay_endpoint=publisher.replay_endpoint,
                                   on_gap=recorder.on_gap, poll_interval_s=0.01)
    with subscriber:
        _wait_for(lambda: len(recorder.seqs) >= 3, "the replayed batches")
        last = _wait_for_live(publisher, recorder)
    assert publisher.replay_requests[0] == 0
    assert recorder.seqs == list(range(last + 1))
    assert recorder.gaps == []


def _wait_for_live(publisher: ReplayingPublisher, recorder: Recorder) -> int:
    """Publish live batches until one arrives; its sequence number."""
    def arrived() -> bool:
        if recorder.seqs[-1:] != [published[-1]]:
            published.append(publisher.publish())
        return recorder.seqs[-1:] == [published[-1]]
    published = [publisher.publish()]
    _wait_for(arrived, "a live batch")
    return published[-1]


def test_a_new_publisher_is_replayed_from_its_start(publisher: ReplayingPublisher) -> None:
    recorder = Recorder()
    subscriber = KVEventSubscriber(publisher.endpoint, recorder.on_batch,
                                   replay_endpoint=publisher.replay_endpoint,
                                   on_gap=recorder.on_gap, poll_interval_s=0.01)
    with subscriber:
        last = _wait_for_live(publisher, recorder)
        while last < 2:  # the restart must show: its batch 1 numbered below the next one due
            last = publisher.publish()
            _wait_for(lambda seq=last: recorder.seqs[-1:] == [seq], "a live batch")
        before = len(recorder.seqs)
        publisher.restart()  # the engine restarted: numbering starts again at 0
        publisher.publish(live=False)
        publisher.publish()
        _wait_for(lambda: len(recorder.seqs) >= before + 2, "the new publisher's batches")
        time.sleep(0.1)  # nothing else may arrive: the live batch 1 is a duplicate
    assert recorder.gaps == [(last + 1, 1)]
    assert recorder.seqs[before:] == [0, 1]
    assert publisher.replay_requests[-1] == 0


def test_without_an_answering_replay_live_batches_still_flow(
        publisher: ReplayingPublisher) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        silent = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    recorder = Recorder()
    subscriber = KVEventSubscriber(publisher.endpoint, recorder.on_batch,
                                   replay_endpoint=silent, on_gap=recorder.on_gap,
                                   poll_interval_s=0.01, replay_timeout_s=0.2)
    with subscriber:
        last = _wait_for_live(publisher, recorder)
        publisher.publish(live=False)
        skipped_to = publisher.publish()
        _wait_for(lambda: recorder.seqs[-1:] == [skipped_to], "the batch after the skip")
    assert subscriber.replay_failures == 2  # on joining, and at the skip
    assert recorder.gaps == [(last + 1, skipped_to)]


def test_vllms_publisher_replays_to_a_late_subscriber() -> None:
    # Contract with the pinned vLLM: its replay socket speaks what the subscriber asks.
    kv_events = pytest.importorskip("vllm.distributed.kv_events")
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        endpoint = node_endpoint("127.0.0.1", a.getsockname()[1], b.getsockname()[1])
    publisher = kv_events.ZmqEventPublisher(data_parallel_rank=0, endpoint=endpoint.bind,
                                            replay_endpoint=endpoint.replay)
    recorder = Recorder()
    try:
        for seq in range(3):
            publisher.publish(kv_events.KVEventBatch(ts=float(seq), events=[]))
        publisher._event_queue.join()  # all three sent (to no one) and buffered
        subscriber = KVEventSubscriber(endpoint.advertised, recorder.on_batch,
                                       replay_endpoint=endpoint.replay,
                                       on_gap=recorder.on_gap, poll_interval_s=0.01)
        with subscriber:
            _wait_for(lambda: len(recorder.seqs) >= 3, "vLLM's replayed batches")
            seq = 3
            while recorder.seqs[-1] < 3:  # then live ones (the first few may be dropped)
                publisher.publish(kv_events.KVEventBatch(ts=float(seq), events=[]))
                seq += 1
                time.sleep(0.05)
                assert seq < 200, "no live batch arrived"
            time.sleep(0.2)
    finally:
        publisher.shutdown()
    assert recorder.seqs == list(range(len(recorder.seqs)))
    assert recorder.gaps == [] and subscriber.replayed_batches >= 3
