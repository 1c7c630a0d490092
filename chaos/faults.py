"""The faults, one class per drill, and when each counts as recovered.

- kill-replica: SIGKILL to a replica's vLLM engine core (``target="engine"``) or to
  the replica actor's worker (``"actor"``). Recovered when the victim is no longer a
  running replica, N replicas run and ``/ready`` is 200.
- hang-replica: SIGSTOP to an engine core, SIGCONT ``hang_s`` later. Recovered once
  resumed, with N replicas running and ``/ready`` 200.
- crash-mid-stream: once ``min_streams`` long streams are in flight, SIGKILL to the
  engine core of the replica with the most requests in flight (the router's count).
  Recovered as kill-replica.
- restart-ingress: SIGKILL to the ingress replica's worker; recovered when a new
  ingress replica runs and ``/ready`` is 200.
- scale-down / scale-up: the LLM deployment's count to N-1 / N+1; recovered when
  that many run (``/ready`` compares with the configured count, so it is not asked).

The victim among equals is a seeded choice over sorted replica ids, so a rerun with
the same seed picks the same position. Scale drills put the count back to N after
the measurement (``end``), so a shared stack is left as it was found; hang-replica
always sends SIGCONT in ``end`` too, even if the drill was interrupted.
Signals and process lookups are injected (``FaultContext``), so tests use fakes.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chaos.cluster import INGRESS_DEPLOYMENT, ClusterError, ReplicaInfo, engine_core_pid
from chaos.sampler import Sample

DRILLS = ("kill-replica", "hang-replica", "crash-mid-stream", "restart-ingress",
          "scale-down", "scale-up")
KILL_TARGETS = ("engine", "actor")


class Scaler(Protocol):
    def set_replicas(self, deployment: str, count: int) -> None: ...


@dataclass(kw_only=True)
class FaultContext:
    scaler: Scaler
    llm_deployment: str
    replicas_before: Sequence[ReplicaInfo]  # running LLM replicas before the fault
    ingress_before: Sequence[ReplicaInfo]
    seed: int
    clock: Callable[[], float]
    in_flight: Callable[[], Mapping[str, float]] = dict
    send_signal: Callable[[int, int], None] = os.kill
    find_engine: Callable[[int], int] = engine_core_pid
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def replicas(self) -> int:
        return len(self.replicas_before)


def choose_victim(candidates: Sequence[ReplicaInfo], seed: int,
                  in_flight: Mapping[str, float] | None = None) -> ReplicaInfo:
    """The busiest candidate when ``in_flight`` is given, ties (and no counts) broken
    by a seeded choice over sorted ids."""
    if not candidates:
        raise ClusterError("no running replica to fault")
    ordered = sorted(candidates, key=lambda r: r.replica_id)
    if in_flight:
        top = max(in_flight.get(r.replica_id, 0.0) for r in ordered)
        ordered = [r for r in ordered if in_flight.get(r.replica_id, 0.0) == top]
    return random.Random(f"drill-victim:{seed}").choice(ordered)


def _pid_of(replica: ReplicaInfo) -> int:
    if replica.pid is None:
        raise ClusterError(f"replica {replica.replica_id} has no known pid")
    return replica.pid


class Fault(ABC):
    name: str

    def ready_to_inject(self, *, in_flight_streams: int) -> bool:
        """Called until True (or a deadline) before ``inject``."""
        return True

    @abstractmethod
    def inject(self, ctx: FaultContext) -> dict[str, Any]:
        """Do the damage; returns what was done (for the report)."""

    @abstractmethod
    def recovered(self, sample: Sample, ctx: FaultContext) -> bool: ...

    def expected_replicas(self, ctx: FaultContext) -> int:
        """Running LLM replicas once recovered."""
        return ctx.replicas

    def end(self, ctx: FaultContext) -> int | None:
        """Undo what must not outlive the drill; returns a replica count to wait for."""
        return None


class _VictimFault(Fault):
    """A fault on one LLM replica that Serve is expected to replace or bring back."""

    victim: ReplicaInfo | None = None

    def recovered(self, sample: Sample, ctx: FaultContext) -> bool:
        running = sample.running(ctx.llm_deployment)
        return (self.victim is not None and self.victim.replica_id not in running
                and len(running) >= ctx.replicas and sample.ready.ready)


class KillReplica(_VictimFault):
    name = "kill-replica"

    def __init__(self, *, target: str = "engine") -> None:
        if target not in KILL_TARGETS:
            raise ValueError(f"target must be one of {', '.join(KILL_TARGETS)}, got {target!r}")
        self.target = target

    def _pick(self, ctx: FaultContext) -> ReplicaInfo:
        return choose_victim(ctx.replicas_before, ctx.seed)

    def inject(self, ctx: FaultContext) -> dict[str, Any]:
        self.victim = self._pick(ctx)
        actor_pid = _pid_of(self.victim)
        pid = ctx.find_engine(actor_pid) if self.target == "engine" else actor_pid
        ctx.send_signal(pid, signal.SIGKILL)
        return {"victim": self.victim.replica_id, "target": self.target, "pid": pid,
                "signal": "SIGKILL"}


class CrashMidStream(KillReplica):
    name = "crash-mid-stream"

    def __init__(self, *, min_streams: int = 2) -> None:
        super().__init__(target="engine")
        self.min_streams = min_streams

    def ready_to_inject(self, *, in_flight_streams: int) -> bool:
        return in_flight_streams >= self.min_streams

    def _pick(self, ctx: FaultContext) -> ReplicaInfo:
        # The router's in-flight counts: the busiest replica has streams to break.
        return choose_victim(ctx.replicas_before, ctx.seed, ctx.in_flight())


class HangReplica(_VictimFault):
    name = "hang-replica"

    def __init__(self, *, hang_s: float = 20.0) -> None:
        if not hang_s > 0:
            raise ValueError(f"hang_s must be > 0, got {hang_s}")
        self.hang_s = hang_s
        self._pid: int | None = None
        self._resumed_at: float | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def inject(self, ctx: FaultContext) -> dict[str, Any]:
        self.victim = choose_victim(ctx.replicas_before, ctx.seed)
        self._pid = ctx.find_engine(_pid_of(self.victim))
        ctx.send_signal(self._pid, signal.SIGSTOP)
        self._timer = threading.Timer(self.hang_s, self._resume, args=(ctx,))
        self._timer.daemon = True
        self._timer.start()
        return {"victim": self.victim.replica_id, "pid": self._pid, "signal": "SIGSTOP",
                "hang_s": self.hang_s}

    def _resume(self, ctx: FaultContext) -> None:
        with self._lock:
            if self._resumed_at is not None or self._pid is None:
                return
            try:
                ctx.send_signal(self._pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # Serve already replaced the hung replica
            self._resumed_at = ctx.clock()
            ctx.details["resumed_at_s"] = self._resumed_at

    def recovered(self, sample: Sample, ctx: FaultContext) -> bool:
        running = sample.running(ctx.llm_deployment)
        return (self._resumed_at is not None and sample.t_s >= self._resumed_at
                and len(running) >= ctx.replicas and sample.ready.ready)

    def end(self, ctx: FaultContext) -> int | None:
        if self._timer is not None:
            self._timer.cancel()
        self._resume(ctx)
        return None


class RestartIngress(Fault):
    name = "restart-ingress"
    victim: ReplicaInfo | None = None

    def inject(self, ctx: FaultContext) -> dict[str, Any]:
        self.victim = choose_victim(ctx.ingress_before, ctx.seed)
        pid = _pid_of(self.victim)
        ctx.send_signal(pid, signal.SIGKILL)
        return {"victim": self.victim.replica_id, "target": "ingress", "pid": pid,
                "signal": "SIGKILL"}

    def recovered(self, sample: Sample, ctx: FaultContext) -> bool:
        running = sample.running(INGRESS_DEPLOYMENT)
        return (self.victim is not None and self.victim.replica_id not in running
                and len(running) >= len(ctx.ingress_before) and sample.ready.ready)


class Scale(Fault):
    def __init__(self, *, delta: int, restore: bool = True) -> None:
        self.delta = delta
        self.restore = restore
        self.name = "scale-up" if delta > 0 else "scale-down"

    def expected_replicas(self, ctx: FaultContext) -> int:
        return ctx.replicas + self.delta

    def inject(self, ctx: FaultContext) -> dict[str, Any]:
        target = self.expected_replicas(ctx)
        if target < 1:
            raise ClusterError(f"cannot scale {ctx.replicas} replica(s) down to {target}")
        ctx.scaler.set_replicas(ctx.llm_deployment, target)
        return {"from_replicas": ctx.replicas, "to_replicas": target}

    def recovered(self, sample: Sample, ctx: FaultContext) -> bool:
        # /ready compares with the configured count, so it stays 503 below it: not asked.
        return len(sample.running(ctx.llm_deployment)) == self.expected_replicas(ctx)

    def end(self, ctx: FaultContext) -> int | None:
        if not self.restore:
            return None
        ctx.scaler.set_replicas(ctx.llm_deployment, ctx.replicas)
        return ctx.replicas


def make_fault(name: str, *, target: str = "engine", hang_s: float = 20.0,
               restore: bool = True) -> Fault:
    if name == "kill-replica":
        return KillReplica(target=target)
    if name == "hang-replica":
        return HangReplica(hang_s=hang_s)
    if name == "crash-mid-stream":
        return CrashMidStream()
    if name == "restart-ingress":
        return RestartIngress()
    if name == "scale-down":
        return Scale(delta=-1, restore=restore)
    if name == "scale-up":
        return Scale(delta=+1, restore=restore)
    raise ValueError(f"unknown drill {name!r}; choose from {', '.join(DRILLS)}")


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.2,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> bool:
    deadline = clock() + timeout_s
    while not predicate():
        if clock() >= deadline:
            return False
        sleep(poll_s)
    return True
