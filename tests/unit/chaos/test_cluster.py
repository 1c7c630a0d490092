"""chaos.cluster's process discovery, on a real process tree shaped like a local stack's."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from chaos.cluster import ClusterError, EngineProcess, engine_core_pid, engine_processes


@pytest.fixture
def stack_tree(tmp_path: Path) -> Iterator[psutil.Process]:
    """root -> replica -> engine, plus an engine-titled child of the root itself (its
    parent is no replica: not one of the stack's engines). The marks are in the
    scripts' file names, so only the process they name carries them."""
    engine = tmp_path / "VLLM::EngineCore.py"
    engine.write_text("import time\ntime.sleep(60)\n")
    replica = tmp_path / "ray::ServeReplica:cacheroute:LLMServer:m.py"
    replica.write_text(f"import subprocess, sys, time\n"
                       f"subprocess.Popen([sys.executable, {str(engine)!r}])\ntime.sleep(60)\n")
    root_script = tmp_path / "root.py"
    root_script.write_text(f"import subprocess, sys, time\n"
                           f"subprocess.Popen([sys.executable, {str(replica)!r}])\n"
                           f"subprocess.Popen([sys.executable, {str(engine)!r}])\n"
                           f"time.sleep(60)\n")
    root = subprocess.Popen([sys.executable, str(root_script)])
    proc = psutil.Process(root.pid)
    try:
        deadline = time.monotonic() + 20
        while len(proc.children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc
    finally:
        for child in proc.children(recursive=True):
            child.kill()
        root.kill()
        root.wait()


def test_engine_processes_finds_each_replicas_engine(stack_tree: psutil.Process) -> None:
    [engine] = engine_processes(stack_tree.pid)
    assert isinstance(engine, EngineProcess)
    replica = psutil.Process(engine.replica_pid)
    assert replica.parent().pid == stack_tree.pid
    assert "ServeReplica:" in engine.replica_title
    assert psutil.Process(engine.engine_pid).parent().pid == engine.replica_pid
    assert engine_core_pid(engine.replica_pid) == engine.engine_pid


def test_a_gone_root_has_no_engines_and_a_gone_replica_is_an_error() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert engine_processes(gone.pid) == []
    with pytest.raises(ClusterError, match="is gone"):
        engine_core_pid(gone.pid)


class _Remote:
    def __init__(self, value: object) -> None:
        self.value = value

    def remote(self, *args: object) -> object:
        return self.value


def test_replicas_carry_their_node_and_its_address() -> None:
    from types import SimpleNamespace

    from chaos.cluster import ServeCluster

    details = {"applications": {"cacheroute": {"deployments": {"LLMServer:m": {"replicas": [
        {"replica_id": "a", "state": "RUNNING", "pid": 1, "actor_name": "A",
         "node_id": "n2", "node_ip": "10.0.0.2"},
        {"replica_id": "b", "state": "STARTING", "pid": None, "actor_name": "B"}]}}}}}
    cluster = object.__new__(ServeCluster)
    cluster._ray = SimpleNamespace(get=lambda ref, timeout: ref)
    cluster._controller = SimpleNamespace(get_serve_instance_details=_Remote(details),
                                          _get_replica_ranks_mapping=_Remote({}))
    cluster.app_name = "cacheroute"
    assert {r.replica_id: (r.node_id, r.node_ip) for r in cluster.replicas()} == {
        "a": ("n2", "10.0.0.2"), "b": (None, None)}
