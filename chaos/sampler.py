"""A once-a-second record of the service's shape during a drill.

Each ``Sample`` holds ``/ready`` (status and ``replicas_ready``) and the replica
list from the Serve controller (``cluster.ServeCluster.replicas``), taken by a
background thread so the load and the fault never wait for it. A fault's
recovery is judged on these samples (``faults.py``), so the recovery time's
resolution is the sampling period plus the controller's own reporting lag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chaos.cluster import ReplicaInfo
from chaos.service_probe import ReadyState

DEFAULT_PERIOD_S = 1.0


class ReplicaSource(Protocol):
    def replicas(self) -> list[ReplicaInfo]: ...


@dataclass(frozen=True, kw_only=True)
class Sample:
    t_s: float  # since the drill's clock started
    ready: ReadyState
    replicas: tuple[ReplicaInfo, ...] | None  # None: the controller did not answer

    def running(self, deployment: str) -> list[str]:
        return sorted(r.replica_id for r in self.replicas or () if r.deployment == deployment
                      and r.running)

    def seats(self, deployment: str) -> list[str]:
        """Ring seats of the running replicas (``ReplicaInfo.seat``)."""
        return sorted(r.seat for r in self.replicas or () if r.deployment == deployment
                      and r.running)


class Sampler:
    def __init__(self, *, read_ready: Callable[[], ReadyState], source: ReplicaSource,
                 clock: Callable[[], float], period_s: float = DEFAULT_PERIOD_S,
                 on_sample: Callable[[Sample], None] = lambda s: None) -> None:
        self._read_ready = read_ready
        self._source = source
        self._clock = clock
        self._period_s = period_s
        self._on_sample = on_sample
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-sampler", daemon=True)

    def take(self) -> Sample:
        ready = self._read_ready()
        try:
            replicas: tuple[ReplicaInfo, ...] | None = tuple(self._source.replicas())
        except Exception:  # noqa: BLE001 -- a controller restart or timeout: a gap, not a crash
            replicas = None
        sample = Sample(t_s=self._clock(), ready=ready, replicas=replicas)
        with self._lock:
            self._samples.append(sample)
        self._on_sample(sample)
        return sample

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def samples(self) -> Sequence[Sample]:
        with self._lock:
            return list(self._samples)

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.take()
            self._stop.wait(max(0.0, self._period_s - (time.monotonic() - started)))
