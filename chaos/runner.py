"""One drill against a running stack: load, fault, recovery, measurement.

    report = run_drill(StackTarget(base_url=..., api_key=..., ray_address=...),
                       DrillOptions(drill="kill-replica"))

Sequence (one clock, seconds since the drill started, for requests, samples and
the fault):

1. wait for ``/ready`` 200; read the replicas from the Serve controller (N = the
   running LLM replicas) and the failover counters;
2. start the sampler (``/ready`` and replicas every second) and the load;
3. at ``fault_at_s`` (crash-mid-stream: once long streams are in flight), inject;
4. wait until the fault's recovery condition holds on a sample taken after the
   fault (``faults.py``), at most ``recovery_timeout_s``;
5. keep the load running ``after_window_s`` more, so the hit rate after recovery
   is measured, then stop it (the load's own count and time bounds end it earlier);
6. undo what must not outlive the drill (SIGCONT, the replica count back to N)
   and wait for it; read the counters again; compute keys moved on the ring
   from the replica ids before and at recovery; build the report.

The stack is not started here: the CLI or a test fixture passes one in, so the
same function runs against a stack of its own, a shared test stack or a service
someone else runs (``--url``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from chaos.cluster import INGRESS_DEPLOYMENT, ReplicaInfo, ServeCluster
from chaos.faults import (
    DRILLS,
    KILL_TARGETS,
    Fault,
    FaultContext,
    make_fault,
    wait_until,
)
from chaos.load import (
    REQUEST_TIMEOUT_S,
    LoadRunner,
    LoadSpec,
    RequestRecord,
    http_client_factory,
    plan_requests,
)
from chaos.report import Windows, build_report
from chaos.ring_churn import peak_keys_moved
from chaos.sampler import Sample, Sampler
from chaos.service_probe import (
    counter_deltas,
    read_failover_counters,
    read_in_flight,
    read_ready,
)


class DrillError(RuntimeError):
    """The drill could not run (service not ready, no replica to fault, ...)."""


@dataclass(frozen=True, kw_only=True)
class StackTarget:
    base_url: str
    ray_address: str
    api_key: str | None = None
    model: str | None = None  # None: the first model /v1/models lists


@dataclass(frozen=True, kw_only=True)
class DrillOptions:
    drill: str
    load: LoadSpec = field(default_factory=LoadSpec)
    windows: Windows = field(default_factory=Windows)
    # Long enough for every tenant's first miss on each replica to fall before the
    # 15 s pre-fault hit-rate window (on a cold stack those misses take ~20 s).
    fault_at_s: float = 40.0
    # A replacement CPU engine took 2-7 min to start on a loaded 2-core machine.
    recovery_timeout_s: float = 480.0
    target: str = "engine"  # kill-replica: "engine" or "actor"
    hang_s: float = 20.0
    restore: bool = True  # scale drills: put the count back afterwards
    ready_timeout_s: float = 300.0
    sample_period_s: float = 1.0
    # crash-mid-stream: how long to wait for streams in flight before injecting anyway.
    inject_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.drill not in DRILLS:
            raise ValueError(f"unknown drill {self.drill!r}; choose from {', '.join(DRILLS)}")
        if self.target not in KILL_TARGETS:
            raise ValueError(f"target must be one of {', '.join(KILL_TARGETS)}, "
                             f"got {self.target!r}")
        for name in ("fault_at_s", "recovery_timeout_s", "ready_timeout_s", "sample_period_s",
                     "hang_s", "inject_wait_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.fault_at_s >= self.load.max_duration_s:
            raise ValueError(f"fault_at_s ({self.fault_at_s}) must be below the load's "
                             f"max_duration_s ({self.load.max_duration_s})")


def _first_model(http: httpx.Client) -> str:
    resp = http.get("/v1/models", timeout=30)
    resp.raise_for_status()
    models = resp.json().get("data") or []
    if not models:
        raise DrillError("the service lists no model")
    return str(models[0]["id"])


def _compact(samples: list[Sample], deployment: str) -> list[dict[str, Any]]:
    return [{"t_s": round(s.t_s, 2), "ready": s.ready.status,
             "replicas_running": None if s.replicas is None else len(s.running(deployment)),
             "ingress_running": (None if s.replicas is None
                                 else len(s.running(INGRESS_DEPLOYMENT)))}
            for s in samples]


class Cluster(Protocol):
    """What the drill needs of the service's cluster (``cluster.ServeCluster``)."""

    def replicas(self) -> list[ReplicaInfo]: ...

    def llm_deployment(self) -> str: ...

    def set_replicas(self, deployment: str, count: int) -> None: ...


def run_drill(target: StackTarget, options: DrillOptions, *,
              on_record: Callable[[RequestRecord], None] = lambda r: None,
              on_phase: Callable[[str], None] = lambda p: None,
              cluster: Cluster | None = None,
              transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """Run one drill and return its report (``report.build_report``); raises DrillError.

    ``cluster`` (default: a driver on ``target.ray_address``) and ``transport``
    (default: the network) are for tests with a fake service."""
    fault = make_fault(options.drill, target=options.target, hang_s=options.hang_s,
                       restore=options.restore)
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    clients = http_client_factory(target.base_url, target.api_key, transport=transport)
    probes = http_client_factory(target.base_url, target.api_key, transport=transport,
                                 timeout_s=30.0)
    connection = nullcontext(cluster) if cluster is not None \
        else ServeCluster(target.ray_address)
    with probes() as http, connection as joined:
        cluster = joined
        on_phase("waiting for /ready")
        if not wait_until(lambda: read_ready(http).ready, timeout_s=options.ready_timeout_s,
                          poll_s=1.0):
            raise DrillError(f"{target.base_url}/ready not 200 after "
                             f"{options.ready_timeout_s:.0f} s")
        model = target.model or _first_model(http)
        replicas = cluster.replicas()
        llm = cluster.llm_deployment()
        before = [r for r in replicas if r.deployment == llm and r.running]
        ingress = [r for r in replicas if r.deployment == INGRESS_DEPLOYMENT and r.running]
        if options.drill == "scale-down" and len(before) < 2:
            raise DrillError(f"scale-down needs at least 2 replicas, the service runs "
                             f"{len(before)}")
        ctx = FaultContext(scaler=cluster, llm_deployment=llm, replicas_before=before,
                           ingress_before=ingress, seed=options.load.seed, clock=clock,
                           in_flight=lambda: read_in_flight(http))
        counters_before = read_failover_counters(http)
        sampler = Sampler(read_ready=lambda: read_ready(http), source=cluster, clock=clock,
                          period_s=options.sample_period_s)
        load = LoadRunner(plan_requests(options.load, model), options.load,
                          client_factory=clients,
                          on_record=on_record, clock=clock)
        try:
            outcome = _drive(fault, ctx, options, sampler, load, clock, on_phase)
        finally:
            load.stop()
            on_phase("draining requests")
            load.join(REQUEST_TIMEOUT_S + 10)
            ctx.details.update(_finish(fault, ctx, options, sampler, clock, on_phase))
            sampler.stop()
        counters_after = read_failover_counters(http)

    fault_at_s, recovered, details = outcome
    samples = list(sampler.samples())
    after_ids = recovered.running(llm) if recovered is not None else []
    return build_report(
        drill=options.drill, replicas=len(before), records=load.records(),
        fault_at_s=fault_at_s,
        recovered_at_s=None if recovered is None else round(recovered.t_s, 3),
        fault={**details, **ctx.details}, counters=counter_deltas(counters_before,
                                                                   counters_after),
        counters_present=counters_before is not None or counters_after is not None,
        keys_moved_fraction=peak_keys_moved([r.seat for r in before],
                                            [s.seats(llm) for s in samples]),
        replica_ids_before=sorted(r.replica_id for r in before), replica_ids_after=after_ids,
        windows=options.windows,
        extra={"model": model, "base_url": target.base_url, "llm_deployment": llm,
               "load": dataclasses.asdict(options.load),
               "options": {k: v for k, v in dataclasses.asdict(options).items()
                           if k not in ("load", "windows")},
               "duration_s": round(clock(), 3), "samples": _compact(samples, llm)})


def _drive(fault: Fault, ctx: FaultContext, options: DrillOptions, sampler: Sampler,
           load: LoadRunner, clock: Callable[[], float], on_phase: Callable[[str], None],
           ) -> tuple[float, Sample | None, dict[str, Any]]:
    """Load, fault, recovery wait, after window: (fault time, recovery sample, details)."""
    sampler.start()
    load.start()
    on_phase("load before the fault")
    if not wait_until(lambda: clock() >= options.fault_at_s or load.done,
                      timeout_s=options.fault_at_s + 5):
        raise DrillError("the load did not reach the fault time")
    if load.done:
        raise DrillError(f"the load ended before the fault at {options.fault_at_s:.0f} s: "
                         "raise --max-requests")
    on_phase(f"waiting to inject {fault.name}")
    wait_until(lambda: fault.ready_to_inject(in_flight_streams=load.in_flight_streams),
               timeout_s=options.inject_wait_s, poll_s=0.05)
    fault_at = round(clock(), 3)
    details = fault.inject(ctx)
    on_phase(f"{fault.name} injected; waiting for recovery")

    seen = 0
    recovered: Sample | None = None

    def check() -> bool:
        nonlocal seen, recovered
        samples = sampler.samples()
        for sample in samples[seen:]:
            if sample.t_s > fault_at and fault.recovered(sample, ctx):
                recovered = sample
                return True
        seen = len(samples)
        return False

    wait_until(check, timeout_s=options.recovery_timeout_s, poll_s=0.2)
    if recovered is not None:
        on_phase("recovered; measuring the hit rate after")
        end = recovered.t_s + options.windows.after_window_s
        wait_until(lambda: clock() >= end or load.done, timeout_s=end - clock() + 5)
    return fault_at, recovered, details


def _finish(fault: Fault, ctx: FaultContext, options: DrillOptions, sampler: Sampler,
            clock: Callable[[], float], on_phase: Callable[[str], None]) -> dict[str, Any]:
    """Undo the fault where it must not outlive the drill; how long that took."""
    count = fault.end(ctx)
    if count is None:
        return {}
    on_phase(f"restoring {count} replica(s)")
    started = clock()
    ok = wait_until(lambda: (s := sampler.take()) is not None
                    and len(s.running(ctx.llm_deployment)) == count,
                    timeout_s=options.recovery_timeout_s, poll_s=1.0)
    return {"restored_to": count, "restore_s": round(clock() - started, 3) if ok else None}
