"""A peer router's turn in a live comparison: plain vLLM engines, the router, a measured
load, a clean stop (``policy_run.run_measured`` sends a policy named ``PACKAGE:POLICY``
here; ``bench/peers.py`` has the catalogue and the command lines).

The same steps as cacheroute's own turn: cold engines (fresh processes, empty
caches), every engine warm before the router starts (one short generation each, as
the service's replicas do before it says ready), the router checked with one request
through it, ``drive(base_url)`` under measurement, then a complete stop. The config
file is written and read exactly as for ``cacheroute serve`` (``service.write_config``,
``serving.config.load_config``), and the engines get that config's engine arguments.

Measured on the engines themselves (each server's ``/metrics``;
``service_metrics.engine_snapshot``): the engine hit rates, requests per engine, and
in flight per engine (running + waiting), sampled each second. cacheroute's router
counters (decisions, spills, replications, spill waits) have no equivalent in a
peer: they are recorded as None, "not measured".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

from bench import peers
from bench.policy_run import MODEL_ID, PolicyRun, ServiceSettings, finish_run
from bench.service import (
    ServiceError,
    ServiceProcess,
    first_completion,
    free_port,
    write_config,
)
from bench.service_metrics import (
    LoadSampler,
    MetricsSnapshot,
    engine_snapshot,
    settled,
)

T = TypeVar("T")

# The service's warm-up (serving/replica/server.py): a prompt crossing one KV block,
# two tokens. Its blocks share no prefix with a trace's prompts.
WARMUP_PROMPT = "Warm-up. " * 40
# Seconds between readiness polls of a starting engine or router.
POLL_S = 1.0


class PeerProcess(ServiceProcess):
    """An engine or a router: started like the service (tagged, own session, logged),
    ready when ``GET health_url`` answers 200, stopped like the service."""

    def __init__(self, *, name: str, command: list[str], port: int, health_path: str,
                 log_path: Path, start_timeout_s: float, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        super().__init__(config_path=log_path, policy=name, port=port, log_path=log_path,
                         start_timeout_s=start_timeout_s, command=command, env=env, cwd=cwd)
        self.health_url = f"{self.base_url}{health_path}"
        self._started: float | None = None

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self):  # type: ignore[no-untyped-def]
        self._started = time.monotonic()
        return super().spawn()

    def wait_ready(self) -> None:
        """Until the health URL answers 200; ServiceError (with the log's tail) when the
        process exits first or the timeout passes."""
        assert self._proc is not None and self._started is not None
        deadline = self._started + self.start_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise ServiceError(f"{self.policy} exited with status {code} before it was "
                                   f"ready; log {self.log_path}:\n" + self._log_tail())
            try:
                if httpx.get(self.health_url, timeout=5.0).status_code == 200:
                    self.startup_s = time.monotonic() - self._started
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.policy} not ready after {self.start_timeout_s:.0f} s;"
                                   f" log {self.log_path}:\n" + self._log_tail())
            time.sleep(POLL_S)


def _engines_fetch(urls: dict[str, str]) -> Callable[[str], MetricsSnapshot]:
    """A ``settled``/``LoadSampler`` fetch reading every engine's ``/metrics``."""
    def fetch(_: str) -> MetricsSnapshot:
        texts = {}
        for name, url in urls.items():
            response = httpx.get(f"{url}/metrics", timeout=30.0)
            response.raise_for_status()
            texts[name] = response.text
        return engine_snapshot(texts)

    return fetch


def _through_router(base_url: str, timeout_s: float) -> None:
    """One short completion through the router: it reaches an engine. Retries until
    ``timeout_s`` (a router may answer its health check before it has its workers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            first_completion(base_url, model=MODEL_ID, prompt="Ready?", max_tokens=1,
                             timeout_s=120.0)
            return
        except httpx.HTTPError as err:
            if time.monotonic() > deadline:
                raise ServiceError(f"the router at {base_url} serves no completion: {err}") \
                    from None
            time.sleep(POLL_S)


def _warm_up(engine: PeerProcess) -> None:
    try:
        first_completion(engine.base_url, model=MODEL_ID, prompt=WARMUP_PROMPT, max_tokens=2)
    except httpx.HTTPError as err:
        raise ServiceError(f"{engine.policy} failed its warm-up: {err}; log "
                           f"{engine.log_path}:\n" + engine._log_tail()) from None


def _stop_all(processes: Sequence[PeerProcess]) -> None:
    # The router first: no request reaches an engine that is going away.
    for process in reversed(processes):
        process.stop()


def run_peer_measured(policy: str, settings: ServiceSettings, folder: Path,
                      drive: Callable[[str], T]) -> PolicyRun[T]:
    """Start the engines and ``policy``'s router, run ``drive(router_url)`` under
    measurement, stop everything. Raises ``service.ServiceError`` when something does
    not come up, ``KeyError`` for an unknown peer."""
    from serving.config import load_config
    from serving.models.source import resolve_model_source

    p = peers.peer(policy)
    folder.mkdir(parents=True, exist_ok=True)
    venv = peers.ensure_venv()
    router_port = settings.port or free_port()
    # The service's own config file for these settings; the routing section is unused
    # (the peer routes), the engine section is what the engines are started with.
    config_path = write_config(folder / "config.yaml", model_id=MODEL_ID, policy="pow2",
                               replicas=settings.replicas, port=router_port,
                               metrics_port=free_port(),
                               ready_timeout_s=settings.start_timeout_s,
                               max_model_len=settings.max_model_len,
                               kv_cache_gib=settings.kv_cache_gib,
                               max_num_seqs=settings.max_num_seqs)
    config = load_config(config_path)
    model_path = resolve_model_source(config, progress=lambda m: print(
        f"[{policy}] {m}", file=sys.stderr, flush=True))
    env = peers.engine_environment(config)
    engines: list[PeerProcess] = []
    kv_ports: list[int] = []
    for k in range(config.replicas):
        port = free_port()
        kv_port = free_port() if p.kv_events else None
        kv_ports += [kv_port] if kv_port is not None else []
        engines.append(PeerProcess(
            name=f"[{policy}] engine {k + 1}", port=port, health_path="/health",
            command=peers.engine_command(config, model_path, port=port, kv_events_port=kv_port),
            env=env, log_path=folder / f"engine-{k + 1}.log",
            start_timeout_s=settings.start_timeout_s))
    names = {f"engine-{k + 1}": e.base_url for k, e in enumerate(engines)}
    started = time.monotonic()
    print(f"[{policy}] starting {len(engines)} vLLM engines (cold; minutes on CPU)...",
          file=sys.stderr, flush=True)
    running: list[PeerProcess] = []
    try:
        # All at once, as Serve starts the service's replicas.
        for engine in engines:
            engine.spawn()
            running.append(engine)
        for engine in engines:
            engine.wait_ready()
            _warm_up(engine)
        router = PeerProcess(
            name=f"[{policy}] router", port=router_port, health_path="/health",
            command=peers.router_command(p, venv, port=router_port, prometheus_port=free_port(),
                                         worker_urls=[e.base_url for e in engines],
                                         kv_event_ports=kv_ports,
                                         block_size=config.engine.block_size,
                                         model_path=model_path),
            log_path=folder / "router.log", start_timeout_s=120.0)
        router.spawn()
        running.append(router)
        router.wait_ready()
        _through_router(router.base_url, timeout_s=120.0)
        startup_s = time.monotonic() - started
        print(f"[{policy}] ready after {startup_s:.0f} s at {router.base_url} "
              f"({p.package} {p.version})", file=sys.stderr, flush=True)
        fetch = _engines_fetch(names)
        before = settled("", fetch=fetch)
        with LoadSampler(metrics_url="", fetch=fetch) as sampler:
            outcome = drive(router.base_url)
        after = settled("", fetch=fetch)
        print(f"[{policy}] stopping the router and the engines", file=sys.stderr, flush=True)
    finally:
        _stop_all(running)
    stragglers = sorted({pid for e in running for pid in e.stragglers_killed})
    if stragglers:
        print(f"[{policy}] ended leftover processes of this run: {len(stragglers)}",
              file=sys.stderr)
    return finish_run(policy, folder, settings, outcome=outcome, before=before, after=after,
                      sampler=sampler, startup_s=startup_s,
                      stragglers_killed=len(stragglers), peer=p.describe())
