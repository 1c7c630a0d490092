"""A local stack: one ``cacheroute serve`` process, started cold and stopped completely.

The one starter of the benchmarks (each policy of a comparison gets a fresh service,
so every policy starts with empty KV caches and an empty router state), the drills
(chaos/stack.py) and the live test tiers (tests/integration/conftest.py). The
service runs exactly as a user starts it: the ``cacheroute`` console script, or
``python -m serving.cli`` (``serve_module_command``) where the caller must run the
code it imported itself. It runs in a new session so that SIGINT reaches its whole
process group, as Ctrl-C in a terminal does. ``start`` returns once the service
prints its ready line, which it does only after every replica served a warm-up
generation (no engine-loading tail in the measurements); it fails with the log's
tail if the process exits first. ``first_completion`` times the first request after
that line, for the tier that checks readiness really means ready.

Stopping: SIGINT to the group (the CLI shuts Serve and Ray down, about 10 s), then
SIGTERM and SIGKILL if it does not exit in time. Ray starts daemons (raylet, GCS,
workers) that may leave the group, so every process of the run is tagged with an
environment variable holding a run id; after the stop, any process still carrying
that tag is this run's straggler and is ended by pid, and what is left of the group
is killed. Nothing outside the tag and the group is ever signalled. Ending
stragglers waits up to about 20 s; a clean stop takes 10-20 s in all.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from router import PolicyConfig

# Environment variable that marks every process a local stack started.
RUN_TAG_ENV = "CACHEROUTE_BENCH_RUN"
READY_PREFIX = "cacheroute: ready at"


class ServiceError(RuntimeError):
    """The service could not be started; the message includes the log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, *, model_id: str, policy: str, replicas: int, port: int,
                 metrics_port: int, ready_timeout_s: float, max_model_len: int = 4096,
                 kv_cache_gib: int = 1, max_num_seqs: int = 8,
                 load_epsilon: float | None = None, load_floor: int | None = None,
                 enable_prefix_caching: bool = True,
                 replicate_before_spill: bool | None = None,
                 spill_wait_s: float | None = None,
                 model_source: str = "default",
                 api_keys: Sequence[str] = (),
                 tenants: Mapping[str, Any] | None = None,
                 routing: Mapping[str, Any] | None = None,
                 sections: Mapping[str, Any] | None = None) -> Path:
    """The stack's config file. ``tenants``: `server.tenants` (each tenant's keys and
    limits) beside the flat ``api_keys`` of tenant `default`; ``routing``: more keys of
    the routing section (they win over the named ones); ``sections``: more top-level
    sections (they win too)."""
    routing_section: dict[str, Any] = {"policy": policy}
    if load_epsilon is not None:
        routing_section["load_epsilon"] = load_epsilon
    # Always written, so the run folder says which floor it ran with (calibration
    # reads it back).
    routing_section["load_floor"] = PolicyConfig().load_floor if load_floor is None \
        else load_floor
    if replicate_before_spill is not None:
        routing_section["replicate_before_spill"] = replicate_before_spill
    if spill_wait_s is not None:
        routing_section["spill_wait_s"] = spill_wait_s
    config: dict[str, Any] = {
        "model": {"id": model_id, "source": model_source},
        "replicas": replicas,
        "engine": {"max_model_len": max_model_len, "kv_cache_gib": kv_cache_gib,
                   "max_num_seqs": max_num_seqs,
                   "enable_prefix_caching": enable_prefix_caching},
        "routing": {**routing_section, **(routing or {})},
        # Only the keys written here, whatever the environment says (the variable
        # is removed from the service's environment too).
        "server": {"host": "127.0.0.1", "port": port, "metrics_port": metrics_port,
                   "api_keys": list(api_keys), "api_keys_env": None,
                   "tenants": dict(tenants or {}),
                   "ready_timeout_s": ready_timeout_s},
        **(sections or {}),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None),
                    encoding="utf-8")
    return path


def serve_command(config_path: Path, policy: str) -> list[str]:
    """``cacheroute serve``: the console script of the installed package."""
    script = Path(sys.executable).with_name("cacheroute")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]
    return [*base, "serve", "--config", str(config_path), "--policy", policy]


def code_root() -> Path:
    """The folder holding the ``serving`` package this process imported."""
    import serving

    return Path(serving.__file__).resolve().parents[1]


def serve_module_command(config: Path, policy: str | None = None, *,
                         address: str | None = None) -> list[str]:
    """``python -m serving.cli serve``, to be run from ``code_root()``: the stack (and its
    Ray workers, which inherit the driver's path) runs the same code as its caller, even
    in a checkout whose console script points at another copy. ``policy``: passed as
    ``--policy`` (else the config's); ``address``: an existing Ray cluster to deploy
    onto (``--address``; else a local head)."""
    command = [sys.executable, "-m", "serving.cli", "serve", "--config", str(config.resolve())]
    command += ["--policy", policy] if policy is not None else []
    return command + (["--address", address] if address is not None else [])


def first_completion(base_url: str, *, model: str, prompt: str, api_key: str | None = None,
                     max_tokens: int = 8, timeout_s: float = 600.0) -> tuple[float, str]:
    """Seconds taken by one greedy completion, and its text; raises on an error status."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.perf_counter()
    resp = httpx.post(f"{base_url}/v1/completions", timeout=timeout_s, headers=headers,
                      json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                            "temperature": 0})
    seconds = time.perf_counter() - started
    resp.raise_for_status()
    return seconds, str(resp.json()["choices"][0]["text"])


def tagged_pids(tag: str) -> list[int]:
    """Pids of live processes whose environment holds ``RUN_TAG_ENV=tag``."""
    needle = f"{RUN_TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_tagged(tag: str, *, grace_s: float = 20.0) -> list[int]:
    """End every process whose environment holds ``RUN_TAG_ENV=tag``: a grace period
    for them to exit on their own (Ray's daemons exit shortly after the driver), then
    SIGTERM and SIGKILL by pid. Returns the pids signalled."""
    deadline = time.monotonic() + grace_s
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    signalled: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = tagged_pids(tag)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        signalled.update(pids)
        time.sleep(3)
    return sorted(signalled)


class ServiceProcess:
    """``with ServiceProcess(...) as svc: svc.base_url`` -- started and stopped around a block."""

    def __init__(self, *, config_path: Path, policy: str, port: int, log_path: Path,
                 start_timeout_s: float, stop_timeout_s: float = 90.0,
                 command: list[str] | None = None, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.config_path = config_path
        # Default: the `cacheroute` console script (the installed package).
        self.command = command or serve_command(config_path, policy)
        self.cwd = cwd
        self.policy = policy
        self.port = port
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        # More environment for the service, over this process's own.
        self.env = dict(env or {})
        self.tag = uuid.uuid4().hex
        self.startup_s: float | None = None
        # The service's ready line, once printed (it names where metrics are).
        self.ready_line: str | None = None
        self.stragglers_killed: list[int] = []
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The ``cacheroute serve`` process (parent of the Ray head it starts)."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> ServiceProcess:  # noqa: PYI034 -- typing.Self needs 3.11
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self) -> subprocess.Popen[str]:
        """Start the process (tagged, in a session of its own, output to the log) and
        return without waiting for it to be ready."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, RUN_TAG_ENV: self.tag}
        env.pop("CACHEROUTE_API_KEYS", None)
        log = self.log_path.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines, log),
                         daemon=True).start()
        return self._proc

    def start(self) -> None:
        started = time.monotonic()
        self.spawn()
        assert self._proc is not None
        deadline = started + self.start_timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise ServiceError(f"`cacheroute serve --policy {self.policy}` not ready after "
                                   f"{self.start_timeout_s:.0f} s; log {self.log_path}:\n"
                                   + self._log_tail()) from None
            if line == "":  # stdout closed: the process is exiting
                code = self._proc.wait()
                self.stop()
                raise ServiceError(f"`cacheroute serve --policy {self.policy}` exited with "
                                   f"status {code} before it was ready; log {self.log_path}:\n"
                                   + self._log_tail())
            if line.startswith(READY_PREFIX):
                self.startup_s = time.monotonic() - started
                self.ready_line = line.strip()
                return

    def stop(self) -> None:
        """Stop the service and everything it started; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        self._end_stragglers()
        if proc is not None:
            # Whatever of the group outlived the tag (a process that dropped the
            # variable): the next stack must start on an idle machine.
            _signal_group(proc.pid, signal.SIGKILL)

    def _end_stragglers(self) -> None:
        self.stragglers_killed = sorted(set(self.stragglers_killed) | set(end_tagged(self.tag)))

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _pump(stream: IO[str] | None, lines: queue.Queue[str], log: IO[str]) -> None:
    try:
        if stream is not None:
            for line in iter(stream.readline, ""):
                log.write(line)
                log.flush()
                lines.put(line)
    finally:
        log.close()
        lines.put("")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
