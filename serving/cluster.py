"""The Ray cluster `cacheroute serve` runs on: a local head it starts, or an existing
cluster it attaches to (`--address`, or `RAY_ADDRESS` as Ray's own tools read it).

Local: a head sized by `default_ray_cpus`, Ray's metrics export on
`server.metrics_port`, and on exit Ray stops with everything on it.

Attached: the cluster is the operator's. The driver only connects (Ray refuses
resource and dashboard arguments from a driver that does not start the head), Serve
is started or reused there, and on exit the service removes its own application,
Serve only when no other application remains, and disconnects; the cluster keeps
running. Each node exports its own metrics (engines report on the node they run on);
the ready line names the export of the node the driver joined.

Serve's HTTP proxy location is derived, not configured: a proxy on every node (Serve's
default, what a cluster of several machines wants: clients and load balancers may
reach any node) unless two nodes share one machine, where their proxies would all bind
the same `server.host:server.port` and all but one fail; then only the head node runs
one. Nodes are told apart by their hostname as Ray reports it (`ray.nodes()`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from serving.config import ServiceConfig

# Serve's proxy locations (`serve.config.ProxyLocation` values).
EVERY_NODE = "EveryNode"
HEAD_ONLY = "HeadOnly"


def default_ray_cpus(config: ServiceConfig) -> int:
    """Logical CPUs of a local head (an attached cluster brings its own)."""
    if config.server.ray_num_cpus is not None:
        return config.server.ray_num_cpus
    # Logical CPUs only gate placement; engines use the real cores regardless.
    return max(8, 2 + int(config.replicas * max(config.engine.cpus_per_replica, 1)) * 2)


def cluster_address(cli_address: str | None,
                    environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster to attach to: ``--address``, else ``RAY_ADDRESS``; None starts a
    local head. Without this, Ray would read ``RAY_ADDRESS`` inside a local start and
    refuse the head's arguments."""
    address = (cli_address or environ.get("RAY_ADDRESS") or "").strip()
    return address or None


def proxy_location(nodes: Iterable[Mapping[str, Any]]) -> str:
    """Serve's proxy location for the alive nodes of ``ray.nodes()`` (module docstring)."""
    hosts = [node.get("NodeManagerHostname") for node in nodes if node.get("Alive")]
    return HEAD_ONLY if len(hosts) != len(set(hosts)) else EVERY_NODE


def init_kwargs(config: ServiceConfig, address: str | None) -> dict[str, Any]:
    """``ray.init`` arguments: a local head's, or only the address when attaching."""
    common: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if address is not None:
        return {"address": address, **common}
    kwargs: dict[str, Any] = {"num_cpus": default_ray_cpus(config),
                              "include_dashboard": False, **common}
    if config.server.metrics_port is not None:
        kwargs["_metrics_export_port"] = config.server.metrics_port
    return kwargs


def ignored_when_attached(config: ServiceConfig) -> list[str]:
    """Config fields set that only a local head reads, to be named when attaching."""
    return [f"server.{name}" for name in ("metrics_port", "ray_num_cpus")
            if getattr(config.server, name) is not None]


def metrics_url(nodes: Iterable[Mapping[str, Any]], node_id: str, *, attached: bool) -> str:
    """Ray's metrics export of the driver's node. A local head is this machine
    (loopback); an attached driver's node is named by its address."""
    node = next(n for n in nodes if n["NodeID"] == node_id)
    host = node["NodeManagerAddress"] if attached else "127.0.0.1"
    return f"http://{host}:{int(node['MetricsExportPort'])}/metrics"


def start_serve(serve: Any, ray: Any, config: ServiceConfig, *, attached: bool) -> str:
    """Start (or, attached, reuse) Serve; returns the proxy location used."""
    location = proxy_location(ray.nodes()) if attached else EVERY_NODE
    serve.start(proxy_location=location,
                http_options={"host": config.server.host, "port": config.server.port})
    return location


def stop(serve: Any, ray: Any, app_name: str, *, attached: bool) -> None:
    """Local: Serve and the head go. Attached: this application goes, Serve too when
    no other application is left on it, and the driver disconnects."""
    try:
        if ray.is_initialized():
            if not attached:
                serve.shutdown()
            else:
                serve.delete(app_name)
                if not serve.status().applications:
                    serve.shutdown()
    finally:
        ray.shutdown()
