"""One policy's turn in a live comparison: a cold service, a measured load, a clean stop.

``run_measured(policy, settings, drive)`` writes the service config, starts a
fresh ``cacheroute serve --policy P`` (``service.py``: cold KV caches, empty router
state, every replica warm before the ready line), scrapes ``/metrics`` until it is
settled, calls ``drive(base_url)`` -- the replay, or vLLM's benchmark client --
while a thread samples per-replica in-flight counts every second, scrapes again,
and stops the service and everything it started. Both runners (``live.py`` and
``vllm_client.py``) go through here, so every workload is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.service import ServiceProcess, free_port, write_config
from bench.service_metrics import (
    LoadSample,
    LoadSampler,
    RunCounters,
    diff,
    load_skew,
    settled,
)
from bench.service_metrics import skew as max_over_mean

T = TypeVar("T")

MODEL_ID = "smollm2-135m-instruct"


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    replicas: int = 2
    port: int | None = None  # None: a free port per policy
    max_num_seqs: int = 8
    kv_cache_gib: int = 1
    max_model_len: int = 4096
    load_epsilon: float | None = None
    # cacheroute's load floor (None: the config default, 0: the bound alone).
    load_floor: int | None = None
    # cacheroute's replication ahead of a spill (None: the config default, off).
    replicate_before_spill: bool | None = None
    # cacheroute's spill wait in seconds (None: the config default; 0: off).
    spill_wait_s: float | None = None
    start_timeout_s: float = 900.0


@dataclass(frozen=True, kw_only=True)
class PolicyRun(Generic[T]):
    policy: str
    outcome: T  # what ``drive`` returned
    counters: RunCounters
    load: list[LoadSample]
    load_skew: float | None
    request_skew: float | None
    startup_s: float | None
    stragglers_killed: int
    # A peer router's package, version and policy (bench/peers.py); None for ours.
    peer: dict[str, Any] | None = None

    def peer_fields(self) -> dict[str, Any]:
        """The result row's record of a peer router (bench/peers.py); none for ours."""
        return {} if self.peer is None else {"peer": self.peer}

    def service_fields(self) -> dict[str, Any]:
        """The ``PolicySummary`` fields measured on the service."""
        return {"engine_hit_rate": self.counters.engine_hit_rate,
                "engine_prompt_hit_rate": self.counters.engine_prompt_hit_rate,
                "load_skew": self.load_skew, "request_skew": self.request_skew,
                "spills": self.counters.spills, "startup_s": self.startup_s}


def run_measured(policy: str, settings: ServiceSettings, folder: Path,
                 drive: Callable[[str], T]) -> PolicyRun[T]:
    """Start ``policy``'s service, run ``drive(base_url)`` under measurement, stop it.
    Raises ``service.ServiceError`` when the service does not come up. (A peer router,
    a name with a colon, runs in ``bench/peer_run.py`` instead.)"""
    folder.mkdir(parents=True, exist_ok=True)
    port = settings.port or free_port()
    config = write_config(folder / "config.yaml", model_id=MODEL_ID, policy=policy,
                          replicas=settings.replicas, port=port, metrics_port=free_port(),
                          ready_timeout_s=settings.start_timeout_s,
                          max_model_len=settings.max_model_len,
                          kv_cache_gib=settings.kv_cache_gib,
                          max_num_seqs=settings.max_num_seqs,
                          load_epsilon=settings.load_epsilon,
                          load_floor=settings.load_floor,
                          replicate_before_spill=settings.replicate_before_spill,
                          spill_wait_s=settings.spill_wait_s)
    service = ServiceProcess(config_path=config, policy=policy, port=port,
                             log_path=folder / "serve.log",
                             start_timeout_s=settings.start_timeout_s + 60)
    print(f"[{policy}] starting the service (cold; this takes minutes on CPU)...",
          file=sys.stderr, flush=True)
    with service:
        metrics_url = f"{service.base_url}/metrics"
        print(f"[{policy}] ready after {service.startup_s:.0f} s at {service.base_url}",
              file=sys.stderr, flush=True)
        before = settled(metrics_url)
        with LoadSampler(metrics_url=metrics_url) as sampler:
            outcome = drive(service.base_url)
        after = settled(metrics_url)
        print(f"[{policy}] stopping the service", file=sys.stderr, flush=True)
    if service.stragglers_killed:
        print(f"[{policy}] ended leftover processes of this run: {service.stragglers_killed}",
              file=sys.stderr)
    return finish_run(policy, folder, settings, outcome=outcome, before=before, after=after,
                      sampler=sampler, startup_s=service.startup_s,
                      stragglers_killed=len(service.stragglers_killed))


def finish_run(policy: str, folder: Path, settings: ServiceSettings, *, outcome: Any,
               before: Any, after: Any, sampler: LoadSampler, startup_s: float,
               stragglers_killed: int, peer: dict[str, Any] | None = None) -> PolicyRun[Any]:
    """One measured run from its counters and load samples, written to ``folder``."""
    counters = diff(before, after)
    requests = list(counters.requests_by_replica.values())
    requests += [0.0] * max(0, settings.replicas - len(requests))
    run = PolicyRun(policy=policy, outcome=outcome, counters=counters, load=sampler.samples,
                    load_skew=load_skew(sampler.samples, settings.replicas),
                    request_skew=max_over_mean(requests), startup_s=startup_s,
                    stragglers_killed=stragglers_killed, peer=peer)
    write_metrics(folder, run, sampler.errors)
    return run


def write_metrics(folder: Path, run: PolicyRun[Any], load_sample_errors: int) -> None:
    """The run's ``service_metrics.json`` (None: not measured for this policy)."""
    counters = run.counters
    (folder / "service_metrics.json").write_text(json.dumps({
        **({"peer": run.peer} if run.peer is not None else {}),
        "requests_by_replica": counters.requests_by_replica,
        "decisions": counters.decisions,
        "replications": counters.replications,
        "spill_waits": counters.spill_waits,
        "engine_hit_rate": counters.engine_hit_rate,
        "engine_prompt_hit_rate": counters.engine_prompt_hit_rate,
        "load_skew": run.load_skew, "request_skew": run.request_skew,
        "load_samples": [{"t_s": s.t_s, "in_flight": dict(s.in_flight)} for s in run.load],
        "load_sample_errors": load_sample_errors,
    }, indent=2) + "\n")


def settings_from(args: argparse.Namespace) -> ServiceSettings:
    """The service settings of ``cacheroute bench``'s flags (bench/live.py's parser)."""
    from serving.config import RoutingConfig

    return ServiceSettings(replicas=args.replicas, port=args.port,
                           max_num_seqs=args.max_num_seqs, kv_cache_gib=args.kv_cache_gib,
                           max_model_len=args.max_model_len, load_epsilon=args.load_epsilon,
                           load_floor=args.load_floor,
                           replicate_before_spill=args.replicate_before_spill,
                           # Written into every config, so that a run's folder says
                           # which it had (bench/sim/calibrate.py reads it).
                           spill_wait_s=(args.spill_wait_s if args.spill_wait_s is not None
                                         else RoutingConfig().spill_wait_s),
                           start_timeout_s=args.start_timeout_s)
