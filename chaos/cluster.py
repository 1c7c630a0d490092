"""The drill's view of the running service's Ray cluster: replicas, their processes, scaling.

Finding the cluster: ``cacheroute serve`` starts a local Ray head (``ray.init``), so
its raylet is a child process whose command line names the GCS address
(``--gcs-address=HOST:PORT``). ``discover_ray_address`` finds that raylet from
the serve process's pid, or from the process listening on the service's HTTP
port (Serve's proxy actor, a worker under the raylet), so ``--url`` alone is
enough on the same machine; ``--ray-address`` overrides it.

Listing replicas: the runtime starts Ray without its dashboard, so
``ray.util.state.list_actors`` (served by the dashboard) has nothing to ask. The
Serve controller's ``get_serve_instance_details`` -- what the dashboard itself
reads -- lists every replica of every deployment with its Serve replica id (the id
the router's ring uses), state, actor name and worker pid.

Processes: a replica's vLLM engine runs in a child process of the replica's
worker (``VLLM::EngineCore`` in its command line); ``engine_core_pid`` finds it
with psutil. A local stack's processes all descend from its ``cacheroute serve``
process: raylet -> ``ray::ServeReplica:<app>:LLMServer:...`` (one per replica) ->
the engine; ``engine_processes`` lists every engine below that root with its
replica's process (O(descendants of the root)). Killing an engine (SIGKILL) is an
engine crash: its replica fails in-flight requests with EngineDeadError and Serve's
health check replaces the replica. Stopping it (SIGSTOP) is a hang: the replica
stays up and healthy to Serve, but its engine makes no progress, which the router
detects (serving/replica/engine_progress.py). Signals go only to pids read this way.

Scaling: the application is deployed with ``external_scaler_enabled`` (see
serving/runtime.py), so the controller's ``update_deployment_replicas`` -- the
backend of Serve's external scaling API -- changes a deployment's replica count in
place. A redeploy through ``serve.run`` would give every deployment a new code
version and restart all replicas, which is not a scale change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import psutil

APP_NAME = "cacheroute"  # serving.app.APP_NAME, kept literal: no Serve import at module load
INGRESS_DEPLOYMENT = "CacheRouteIngress"  # serving.app.INGRESS_DEPLOYMENT
ENGINE_CORE_MARK = "EngineCore"
# In the process title of a Serve replica's worker, e.g. `ray::ServeReplica:cacheroute:...`.
REPLICA_PROCESS_MARK = "ServeReplica:"


class ClusterError(RuntimeError):
    """The cluster or a replica process could not be found or acted on."""


@dataclass(frozen=True, kw_only=True)
class ReplicaInfo:
    deployment: str
    replica_id: str
    state: str
    pid: int | None
    actor_name: str | None
    # Serve's deployment rank: the replica's seat on the router's ring
    # (router.ring.rank_seat); None where the controller does not report it.
    rank: int | None = None
    # The Ray node the replica's actor runs on and its address, as the controller
    # records them; None before the actor is placed.
    node_id: str | None = None
    node_ip: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def seat(self) -> str:
        """Where the router's ring places this replica: its rank's seat, else its id."""
        from router.ring import rank_seat

        return rank_seat(self.rank) if self.rank is not None else self.replica_id


def _gcs_address_of(proc: psutil.Process) -> str | None:
    try:
        cmdline = proc.cmdline()
    except (psutil.Error, OSError):
        return None
    if not cmdline or "raylet" not in os.path.basename(cmdline[0]):
        return None
    for arg in cmdline:
        if arg.startswith("--gcs-address="):
            return arg.split("=", 1)[1]
    return None


def _raylet_address_near(proc: psutil.Process) -> str | None:
    """The GCS address of a raylet that is ``proc``, an ancestor of it, or its child."""
    chain = [proc]
    try:
        chain += proc.parents()
    except psutil.Error:
        pass
    for p in chain:
        if (addr := _gcs_address_of(p)) is not None:
            return addr
    try:
        children = proc.children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        if (addr := _gcs_address_of(child)) is not None:
            return addr
    return None


def discover_ray_address(*, base_url: str | None = None, root_pid: int | None = None) -> str:
    """The GCS address (``HOST:PORT``) of the service's Ray cluster; raises ClusterError."""
    if root_pid is not None:
        try:
            if (addr := _raylet_address_near(psutil.Process(root_pid))) is not None:
                return addr
        except psutil.NoSuchProcess:
            pass
    if base_url is not None:
        port = urlparse(base_url).port or 80
        try:
            conns = psutil.net_connections(kind="tcp")
        except (psutil.AccessDenied, OSError):
            conns = []
        for conn in conns:
            if (conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
                    and conn.pid):
                try:
                    if (addr := _raylet_address_near(psutil.Process(conn.pid))) is not None:
                        return addr
                except psutil.NoSuchProcess:
                    continue
    raise ClusterError("could not find the service's Ray cluster from "
                       f"{base_url or f'pid {root_pid}'}; pass --ray-address HOST:PORT")


@dataclass(frozen=True)
class EngineProcess:
    engine_pid: int
    # The Serve replica actor's process (the engine's parent).
    replica_pid: int
    # The replica actor's process title, e.g. `ray::ServeReplica:cacheroute:LLMServer:m`.
    replica_title: str


def _title(proc: psutil.Process) -> str:
    """Command line and name: vLLM and Ray retitle their processes in either."""
    try:
        return " ".join(proc.cmdline()) + " " + proc.name()
    except (psutil.Error, OSError):
        return ""


def engine_core_pid(replica_pid: int) -> int:
    """The vLLM engine-core process under a replica's worker; raises ClusterError."""
    try:
        children = psutil.Process(replica_pid).children(recursive=True)
    except psutil.NoSuchProcess as exc:
        raise ClusterError(f"replica process {replica_pid} is gone") from exc
    for child in children:
        if ENGINE_CORE_MARK in _title(child):
            return child.pid
    raise ClusterError(f"no {ENGINE_CORE_MARK} process under replica process {replica_pid}")


def engine_processes(root_pid: int) -> list[EngineProcess]:
    """Every live vLLM engine process below `root_pid` (the `cacheroute serve`
    process), with its replica's process; sorted by engine pid."""
    try:
        descendants = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in descendants:
        if ENGINE_CORE_MARK not in _title(proc):
            continue
        try:
            parent = proc.parent()
            if parent is None or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        title = _title(parent)
        if REPLICA_PROCESS_MARK in title:
            found.append(EngineProcess(proc.pid, parent.pid, title))
    return sorted(found, key=lambda e: e.engine_pid)


class ServeCluster:
    """A Ray driver connected to the service's cluster; ``close()`` disconnects."""

    def __init__(self, ray_address: str, *, app_name: str = APP_NAME) -> None:
        from serving.runtime import prepare_environment

        prepare_environment()  # token auth off, as the local head runs it
        import ray

        self._ray = ray
        self.app_name = app_name
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            ray.init(address=ray_address, namespace="serve", logging_level="ERROR",
                     log_to_driver=False)
        from serving.ray_private import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        try:
            self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError as exc:
            self.close()
            raise ClusterError(f"no Serve controller on the Ray cluster at {ray_address}") \
                from exc

    def close(self) -> None:
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> ServeCluster:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _details(self) -> dict[str, Any]:
        return self._ray.get(self._controller.get_serve_instance_details.remote(), timeout=30)

    def replicas(self) -> list[ReplicaInfo]:
        """Every replica of the application's deployments, in any state."""
        app = (self._details().get("applications") or {}).get(self.app_name)
        if app is None:
            raise ClusterError(f"no Serve application named {self.app_name!r}")
        out = []
        for name, deployment in (app.get("deployments") or {}).items():
            ranks = self._ranks(name)
            for r in deployment.get("replicas") or ():
                state = r.get("state")
                rid = str(r.get("replica_id"))
                out.append(ReplicaInfo(deployment=name, replica_id=rid,
                                       state=str(getattr(state, "value", state)),
                                       pid=r.get("pid"), actor_name=r.get("actor_name"),
                                       rank=ranks.get(rid), node_id=r.get("node_id") or None,
                                       node_ip=r.get("node_ip") or None))
        return out

    def _ranks(self, deployment: str) -> dict[str, int]:
        """Replica id -> deployment rank, from the controller (the ranks replicas
        report to the router); empty if this Ray version does not expose them."""
        from serving.ray_private import DeploymentID

        try:
            mapping = self._ray.get(self._controller._get_replica_ranks_mapping.remote(
                DeploymentID(name=deployment, app_name=self.app_name)), timeout=30)
        except Exception:  # an older controller, or one busy restarting
            return {}
        ranks = {}
        for rid, rank in (mapping or {}).items():
            value = getattr(rank, "rank", rank)
            if isinstance(value, int):
                ranks[str(rid)] = value
        return ranks

    def llm_deployment(self) -> str:
        names = {r.deployment for r in self.replicas()} - {INGRESS_DEPLOYMENT}
        if len(names) != 1:
            raise ClusterError(f"expected one LLM deployment, found {sorted(names) or 'none'}")
        return names.pop()

    def set_replicas(self, deployment: str, count: int) -> None:
        from serving.ray_private import DeploymentID

        try:
            self._ray.get(self._controller.update_deployment_replicas.remote(
                DeploymentID(name=deployment, app_name=self.app_name), count), timeout=30)
        except Exception as exc:  # ExternalScalerDisabledError arrives wrapped in RayTaskError
            raise ClusterError(f"could not scale {deployment} to {count}: "
                               f"{str(exc).splitlines()[-1] if str(exc) else exc!r}") from exc
