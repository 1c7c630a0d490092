"""`run_service`'s lifecycle on a fake Ray and Serve: what a local run starts and stops,
and what a run attached to an existing cluster leaves running."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

import serving.app
from serving import cli, runtime
from serving.cluster import EVERY_NODE, HEAD_ONLY
from serving.config import ServiceConfig

HEAD = {"NodeID": "head", "Alive": True, "NodeManagerHostname": "host-a",
        "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 9100}


def worker_node(host: str) -> dict:
    return {"NodeID": f"w-{host}", "Alive": True, "NodeManagerHostname": host,
            "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 9101}


class FakeServe:
    def __init__(self, other_apps: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.apps = {serving.app.APP_NAME, *other_apps}

    def start(self, **kwargs: Any) -> None:
        self.calls.append(("start", kwargs))

    def run(self, app: Any, **kwargs: Any) -> None:
        self.calls.append(("run", kwargs["name"]))

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.apps.discard(name)

    def status(self) -> Any:
        return types.SimpleNamespace(applications={name: None for name in self.apps})

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))


class FakeRay(types.ModuleType):
    def __init__(self, serve: FakeServe, nodes: list[dict]) -> None:
        super().__init__("ray")
        self.serve = serve
        self._nodes = nodes
        self.init_kwargs: dict[str, Any] | None = None
        self.disconnected = False

    def init(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs

    def is_initialized(self) -> bool:
        return self.init_kwargs is not None and not self.disconnected

    def shutdown(self) -> None:
        self.disconnected = True

    def nodes(self) -> list[dict]:
        return self._nodes

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 3.0}

    def get_runtime_context(self) -> Any:
        return types.SimpleNamespace(get_node_id=lambda: "head")


def run(monkeypatch: pytest.MonkeyPatch, config: ServiceConfig, *, address: str | None,
        nodes: list[dict], other_apps: tuple[str, ...] = ()) -> tuple[FakeRay, dict, list[str]]:
    """One `run_service` until ready, then interrupted as Ctrl-C would."""
    serve = FakeServe(other_apps)
    ray = FakeRay(serve, nodes)
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(runtime, "prepare_environment", lambda: None)
    monkeypatch.setattr(runtime, "resolve_model_source", lambda config, progress: "/model")
    monkeypatch.setattr(runtime, "wait_ready", lambda url, timeout_s: {"replicas_ready": 2})
    monkeypatch.setattr(runtime.signal, "signal", lambda sig, handler: None)
    monkeypatch.setattr(serving.app, "build_app", lambda config, path: "app")
    ready: dict = {}
    progress: list[str] = []

    def on_ready(info: dict) -> None:
        ready.update(info)
        raise KeyboardInterrupt

    runtime.run_service(config, on_ready=on_ready, progress=progress.append, address=address)
    return ray, ready, progress


def test_a_local_run_starts_a_head_and_stops_serve_and_ray(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServiceConfig.model_validate({"server": {"metrics_port": 9100}})
    ray, ready, _ = run(monkeypatch, config, address=None, nodes=[HEAD])
    assert ray.init_kwargs is not None
    assert ray.init_kwargs["num_cpus"] == runtime.default_ray_cpus(config)
    assert ray.init_kwargs["_metrics_export_port"] == 9100
    calls = ray.serve.calls
    assert calls[0] == ("start", {"proxy_location": EVERY_NODE,
                                  "http_options": {"host": "127.0.0.1", "port": 8000}})
    assert ("run", serving.app.APP_NAME) in calls
    assert calls[-1] == ("shutdown", None) and ray.disconnected
    assert ready["metrics_url"] == "http://127.0.0.1:9100/metrics"


def test_an_attached_run_only_connects_and_leaves_the_cluster_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServiceConfig.model_validate({"server": {"metrics_port": 9100}})
    ray, ready, progress = run(monkeypatch, config, address="10.0.0.1:6379",
                               nodes=[HEAD, worker_node("host-b")])
    assert ray.init_kwargs == {"address": "10.0.0.1:6379", "logging_level": "WARNING",
                               "log_to_driver": False}
    calls = ray.serve.calls
    assert calls[0][1]["proxy_location"] == EVERY_NODE
    # Its own application goes; with none left, Serve too; Ray is only disconnected.
    assert calls[-2:] == [("delete", serving.app.APP_NAME), ("shutdown", None)]
    assert ray.disconnected
    assert ready["metrics_url"] == "http://10.0.0.1:9100/metrics"
    assert any("server.metrics_port applies to a local Ray head only" in m for m in progress)


def test_an_attached_run_keeps_serve_for_other_applications(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ray, _, _ = run(monkeypatch, ServiceConfig(), address="10.0.0.1:6379",
                    nodes=[HEAD, worker_node("host-b")], other_apps=("theirs",))
    assert ("delete", serving.app.APP_NAME) in ray.serve.calls
    assert ("shutdown", None) not in ray.serve.calls
    assert ray.disconnected


def test_nodes_sharing_a_machine_get_serve_on_the_head_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ray, _, progress = run(monkeypatch, ServiceConfig(), address="10.0.0.1:6379",
                           nodes=[HEAD, worker_node("host-a"), worker_node("host-a")])
    assert ray.serve.calls[0][1]["proxy_location"] == HEAD_ONLY
    assert any("proxy on the head node only" in m for m in progress)


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    (["--address", "10.0.0.1:6379"], {}, "10.0.0.1:6379"),
    ([], {"RAY_ADDRESS": "10.0.0.9:6379"}, "10.0.0.9:6379"),
    ([], {}, None),
])
def test_serve_passes_the_cluster_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          argv: list[str], environ: dict[str, str],
                                          expected: str | None) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen: list[str | None] = []
    monkeypatch.setattr(runtime, "run_service",
                        lambda config, *, on_ready, address, progress: seen.append(address))
    config = tmp_path / "c.yaml"
    config.write_text("server: {api_keys_env: null}\n")
    assert cli.main(["serve", "--config", str(config), *argv]) == 0
    assert seen == [expected]
