"""bench.service: the local stack's config, command, start and stop (on a stand-in process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.service import (
    RUN_TAG_ENV,
    ServiceError,
    ServiceProcess,
    code_root,
    end_tagged,
    serve_command,
    serve_module_command,
    tagged_pids,
    write_config,
)
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


def test_stack_config_carries_tenants_with_their_limits(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", model_id="m", policy="cacheroute", replicas=1,
                        port=18123, metrics_port=18124, ready_timeout_s=300.0,
                        api_keys=["k-default"], tenants={"metered": {
                            "api_keys": ["k-metered"],
                            "limits": {"requests_per_s": 0.5, "burst": 2}}})
    server = load_config(path).server
    assert server.resolved_api_keys() == ("k-default",)
    metered = server.tenants["metered"]
    assert metered.resolved_api_keys() == ("k-metered",)
    assert metered.limits is not None
    assert (metered.limits.requests_per_s, metered.limits.burst) == (0.5, 2)


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


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_end_tagged_ends_the_run_s_processes_that_outlive_their_grace() -> None:
    tag = uuid.uuid4().hex
    # Ignores SIGTERM, as a wedged daemon might: SIGKILL must follow.
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring', flush=True); "
         "time.sleep(60)"],
        env={**os.environ, RUN_TAG_ENV: tag}, stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "ignoring\n"
        assert end_tagged(tag, grace_s=0.5) == [stubborn.pid]
        assert stubborn.wait(timeout=10) == -9
        assert bystander.poll() is None
    finally:
        for proc in (stubborn, bystander):
            proc.kill()
            proc.wait()


def test_benchmark_config_can_turn_replication_on_and_off(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", model_id="m", policy="cacheroute", replicas=2,
                        port=18123, metrics_port=18124, ready_timeout_s=300.0,
                        replicate_before_spill=False)
    assert load_config(path).routing.replicate_before_spill is False
    on = write_config(tmp_path / "d.yaml", model_id="m", policy="cacheroute", replicas=2,
                      port=18123, metrics_port=18124, ready_timeout_s=300.0,
                      replicate_before_spill=True)
    assert load_config(on).routing.replicate_before_spill is True


def test_test_tier_config_has_its_key_routing_keys_and_sections(tmp_path: Path) -> None:
    # The live test tiers' stack: an API key, routing keys that win over the written
    # floor, and whole sections of their own.
    path = write_config(tmp_path / "c.yaml", model_id="m", policy="cacheroute", replicas=2,
                        port=18123, metrics_port=18124, ready_timeout_s=900.0,
                        max_model_len=2048, api_keys=["test-key-0123456789"],
                        routing={"replicate_before_spill": True, "load_floor": 0},
                        sections={"failover": {"progress_timeout_s": 5.0}})
    config = load_config(path)
    assert config.server.api_keys == ("test-key-0123456789",)
    assert config.server.api_keys_env is None
    assert (config.routing.load_floor, config.routing.replicate_before_spill) == (0, True)
    assert config.engine.max_model_len == 2048
    assert config.failover.progress_timeout_s == 5.0


def test_serve_module_command_runs_the_imported_code(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    assert serve_module_command(config) == [sys.executable, "-m", "serving.cli", "serve",
                                            "--config", str(config.resolve())]
    assert serve_module_command(config, "pow2")[-2:] == ["--policy", "pow2"]
    assert serve_module_command(config, address="10.0.0.1:6379")[-2:] == [
        "--address", "10.0.0.1:6379"]
    assert "--address" not in serve_module_command(config, "pow2")
    assert (code_root() / "serving" / "cli.py").is_file()


# A stand-in for `cacheroute serve`: a child in its group, the ready line, then waiting.
FAKE_SERVE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("cacheroute: ready at http://127.0.0.1:1/v1", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_service_is_ready_at_its_line_and_stops_with_everything_it_started(
        tmp_path: Path) -> None:
    service = ServiceProcess(config_path=tmp_path / "c.yaml", policy="cacheroute", port=1,
                             log_path=tmp_path / "serve.log", start_timeout_s=60,
                             stop_timeout_s=10, command=[sys.executable, "-c", FAKE_SERVE],
                             env={"EXTRA_FOR_THE_STACK": "1"})
    with service:
        assert service.startup_s is not None and service.startup_s < 60
        assert service.ready_line == "cacheroute: ready at http://127.0.0.1:1/v1"
        # The service and its child (read from /proc, which may lag a busy machine).
        deadline = time.monotonic() + 10
        while len(pids := tagged_pids(service.tag)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.pid in pids and len(pids) == 2
        environ = Path(f"/proc/{service.pid}/environ").read_bytes().split(b"\0")
        assert b"EXTRA_FOR_THE_STACK=1" in environ
    assert tagged_pids(service.tag) == []
    assert "cacheroute: ready at" in (tmp_path / "serve.log").read_text()


def test_a_service_that_exits_before_ready_fails_with_its_log(tmp_path: Path) -> None:
    service = ServiceProcess(config_path=tmp_path / "c.yaml", policy="cacheroute", port=1,
                             log_path=tmp_path / "serve.log", start_timeout_s=60,
                             command=[sys.executable, "-c", "print('bad config'); exit(2)"])
    with pytest.raises(ServiceError, match="exited with status 2(.|\n)*bad config"):
        service.start()
