"""Which Ray cluster `cacheroute serve` runs on (serving/cluster.py): the address it
attaches to, the proxy location it derives, the `ray.init` arguments of each mode."""

from __future__ import annotations

import pytest

from serving.cluster import (
    EVERY_NODE,
    HEAD_ONLY,
    cluster_address,
    default_ray_cpus,
    ignored_when_attached,
    init_kwargs,
    metrics_url,
    proxy_location,
)
from serving.config import ServiceConfig


def node(host: str, *, alive: bool = True, node_id: str = "n", address: str = "10.0.0.1",
         metrics_port: int = 9100) -> dict:
    return {"NodeID": node_id, "Alive": alive, "NodeManagerHostname": host,
            "NodeManagerAddress": address, "MetricsExportPort": metrics_port}


def test_the_command_line_address_wins_over_ray_address() -> None:
    assert cluster_address("10.0.0.1:6379", {"RAY_ADDRESS": "10.0.0.9:6379"}) == "10.0.0.1:6379"


def test_ray_address_is_honoured_as_ray_tools_do() -> None:
    assert cluster_address(None, {"RAY_ADDRESS": "10.0.0.9:6379"}) == "10.0.0.9:6379"


@pytest.mark.parametrize("environ", [{}, {"RAY_ADDRESS": ""}, {"RAY_ADDRESS": "  "}])
def test_no_address_starts_a_local_head(environ: dict[str, str]) -> None:
    assert cluster_address(None, environ) is None
    assert cluster_address("", environ) is None


def test_a_proxy_on_every_node_of_distinct_machines() -> None:
    assert proxy_location([node("a"), node("b"), node("c")]) == EVERY_NODE


def test_nodes_sharing_a_machine_get_one_proxy_on_the_head() -> None:
    # Their proxies would all bind server.host:server.port on that machine.
    assert proxy_location([node("a"), node("b"), node("b")]) == HEAD_ONLY


def test_a_dead_node_does_not_count_as_sharing_a_machine() -> None:
    # A node that left and came back on the same machine is two entries, one dead.
    assert proxy_location([node("a"), node("b", alive=False), node("b")]) == EVERY_NODE


def test_a_local_head_is_sized_and_exports_metrics_on_the_configured_port() -> None:
    config = ServiceConfig.model_validate({"server": {"metrics_port": 9200}})
    kwargs = init_kwargs(config, None)
    assert kwargs["num_cpus"] == default_ray_cpus(config)
    assert kwargs["include_dashboard"] is False
    assert kwargs["_metrics_export_port"] == 9200
    assert "address" not in kwargs


def test_attaching_passes_only_the_address_and_logging() -> None:
    # Ray raises on resource, dashboard or metrics-port arguments from a driver that
    # connects to a running cluster.
    config = ServiceConfig.model_validate({"server": {"metrics_port": 9200,
                                                      "ray_num_cpus": 4}})
    assert init_kwargs(config, "10.0.0.1:6379") == {
        "address": "10.0.0.1:6379", "logging_level": "WARNING", "log_to_driver": False}
    assert ignored_when_attached(config) == ["server.metrics_port", "server.ray_num_cpus"]
    assert ignored_when_attached(ServiceConfig()) == []


def test_metrics_url_names_the_drivers_node() -> None:
    nodes = [node("a", node_id="head", address="10.0.0.1", metrics_port=9100),
             node("b", node_id="worker", address="10.0.0.2", metrics_port=9101)]
    assert metrics_url(nodes, "worker", attached=True) == "http://10.0.0.2:9101/metrics"
    assert metrics_url(nodes, "head", attached=False) == "http://127.0.0.1:9100/metrics"
