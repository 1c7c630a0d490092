"""bench.service pieces that need no running service: its config and its cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.service import RUN_TAG_ENV, serve_command, tagged_pids, write_config
from serving.config import load_config


def test_benchmark_config_is_valid_for_the_service(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", model_id="smollm2-135m-instruct",
                        policy="ray-prefix", replicas=3, port=18123, metrics_port=18124,
                        ready_timeout_s=300.0, max_num_seqs=4)
    config = load_config(path)
    assert config.routing.policy == "ray-prefix"
    assert config.replicas == 3
    assert (config.server.port, config.server.metrics_port) == (18123, 18124)
    assert config.engine.max_num_seqs == 4 and config.engine.block_size == 128
    # Keys from the environment must not turn authentication on for the benchmark.
    assert config.server.api_keys == () and config.server.api_keys_env is None
    assert config.routing.load_epsilon == 0.25  # the service default unless asked
    assert config.routing.load_floor == 4  # the default, written so the run records it


def test_benchmark_config_carries_the_load_epsilon(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", model_id="m", policy="cacheroute", replicas=2,
                        port=18123, metrics_port=18124, ready_timeout_s=300.0, load_epsilon=1.5,
                        load_floor=3)
    routing = load_config(path).routing
    assert (routing.load_epsilon, routing.load_floor) == (1.5, 3)


def test_serve_command_names_config_and_policy(tmp_path: Path) -> None:
    cmd = serve_command(tmp_path / "c.yaml", "cacheroute")
    assert cmd[-5:] == ["serve", "--config", str(tmp_path / "c.yaml"), "--policy", "cacheroute"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_tagged_pids_finds_only_processes_of_this_run() -> None:
    tag = uuid.uuid4().hex
    assert tagged_pids(tag) == []
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env={**os.environ, RUN_TAG_ENV: tag})
    try:
        deadline = time.monotonic() + 10
        while child.pid not in tagged_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tagged_pids(tag) == [child.pid]
        assert tagged_pids(uuid.uuid4().hex) == []
    finally:
        child.kill()
        child.wait()
    assert tagged_pids(tag) == []


def test_benchmark_config_can_turn_replication_on_and_off(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", model_id="m", policy="cacheroute", replicas=2,
                        port=18123, metrics_port=18124, ready_timeout_s=300.0,
                        replicate_before_spill=False)
    assert load_config(path).routing.replicate_before_spill is False
    on = write_config(tmp_path / "d.yaml", model_id="m", policy="cacheroute", replicas=2,
                      port=18123, metrics_port=18124, ready_timeout_s=300.0,
                      replicate_before_spill=True)
    assert load_config(on).routing.replicate_before_spill is True
