"""Running the service: Ray (a local head, or an existing cluster attached to, see
serving/cluster.py), Serve, the application, and the readiness wait.

`run_service` is what `cacheroute serve` does. It returns only when the service stops;
`on_ready` is called once every replica has served its warm-up generation, which is
also when `GET /ready` turns 200.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

import httpx

from serving import cluster
from serving.cluster import default_ray_cpus
from serving.config import ServiceConfig
from serving.models.source import resolve_model_source

__all__ = ["base_url", "default_ray_cpus", "prepare_environment", "run_service",
           "wait_ready"]


def prepare_environment() -> None:
    """Process-wide settings that must be in place before Ray is imported."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    # A single-host local run: Ray's cluster token auth protects nothing here and
    # would need a token to be provisioned first. Clusters (KubeRay) set their own.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def base_url(config: ServiceConfig) -> str:
    host = config.server.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{config.server.port}"


def wait_ready(url: str, timeout_s: float, *, poll_s: float = 1.0) -> dict:
    """Poll `GET /ready` until 200; raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    with httpx.Client(timeout=10.0) as client:
        while time.monotonic() < deadline:
            try:
                resp = client.get(f"{url}/ready")
                last = resp.json() if resp.headers.get("content-type", "").startswith(
                    "application/json") else {}
                if resp.status_code == 200:
                    return last
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(poll_s)
    raise TimeoutError(f"not ready after {timeout_s:.0f} s (last status: {last or 'no answer'})")


def _interrupt(signum: int, frame: object) -> None:
    # Raise in the main thread rather than set an Event from the handler: a handler
    # that takes a lock the interrupted code already holds would deadlock.
    raise KeyboardInterrupt


def run_service(config: ServiceConfig, *, on_ready: Callable[[dict], None],
                progress: Callable[[str], None] = print, address: str | None = None) -> None:
    """Run until SIGINT or SIGTERM; returns after a clean shutdown. ``address``: an
    existing Ray cluster to deploy onto (None: start a local head)."""
    prepare_environment()
    model_path = resolve_model_source(config, progress=progress)

    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)

    attached = address is not None
    if attached:
        progress(f"attaching to the Ray cluster at {address}")
        for name in cluster.ignored_when_attached(config):
            progress(f"{name} applies to a local Ray head only; the cluster's own is used")
    else:
        progress(f"starting Ray ({default_ray_cpus(config)} logical CPUs) and Serve")
    try:
        ray.init(**cluster.init_kwargs(config, address))
        location = cluster.start_serve(serve, ray, config, attached=attached)
        if attached:
            where = "the head node only" if location == cluster.HEAD_ONLY else "every node"
            progress(f"Serve's HTTP proxy on {where}; "
                     f"{int(ray.cluster_resources().get('CPU', 0))} logical CPUs in the cluster")
        app = build_app(config, model_path)
        progress(f"deploying {config.replicas} replica(s) of {config.model.id} "
                 f"(policy {config.routing.policy}); each warms up before it counts as ready")
        # external_scaler_enabled: the replica count can be changed in place through
        # Serve's external scaling API (`cacheroute drill scale-down`); a redeploy from
        # here would give every deployment a new code version and restart all replicas.
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False,
                  external_scaler_enabled=True)
        info = wait_ready(base_url(config), config.server.ready_timeout_s)
        info["metrics_url"] = cluster.metrics_url(
            ray.nodes(), ray.get_runtime_context().get_node_id(), attached=attached)
        on_ready(info)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        progress("shutting down" if not attached else
                 "removing the application and disconnecting (the cluster keeps running)")
        cluster.stop(serve, ray, APP_NAME, attached=attached)
