"""The live stack, started once per test session and shared.

`cacheroute serve` runs as a subprocess exactly as a user starts it (Ray head, Serve,
2 vLLM CPU replicas of the embedded default model), configured with an API key so the
auth tests need no second stack. The fixture sends the first completion the moment the
ready line appears and records its latency for the readiness test.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
MODEL_ID = "smollm2-135m-instruct"
START_TIMEOUT_S = float(os.environ.get("CACHEROUTE_TEST_START_TIMEOUT_S", "900"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    base_url: str
    api_key: str
    model: str
    model_dir: Path
    first_request_s: float
    first_request_text: str
    log_path: Path
    metrics_url: str

    def client(self, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key,
                      max_retries=0, timeout=300, **kwargs)

    def requests_by_replica(self) -> dict[str, float]:
        """Finished requests per replica, from the engines' own Prometheus counters."""
        from bench.replica_load import requests_by_replica

        return requests_by_replica(self.metrics_url)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=300,
                            headers={"Authorization": f"Bearer {self.api_key}"})


def _pump(stream, lines: "queue.Queue[str]", log) -> None:
    for line in iter(stream.readline, ""):
        log.write(line)
        log.flush()
        lines.put(line)
    lines.put("")


def start_stack(tmp: Path, *, policy: str = "cacheroute", replicas: int = 2,
                extra_yaml: str = "", routing_yaml: str = "",
                max_model_len: int = 2048) -> tuple[subprocess.Popen, Stack]:
    """``routing_yaml``: more keys of the routing section, as flow-mapping entries
    (``"load_epsilon: 1"``); ``extra_yaml``: more top-level sections."""
    from serving.models.default import ensure_default_model

    model_dir = ensure_default_model()
    port, metrics_port = free_port(), free_port()
    config = tmp / "cacheroute.yaml"
    config.write_text(
        f"model: {{id: {MODEL_ID}, source: default}}\n"
        f"replicas: {replicas}\n"
        f"engine: {{max_model_len: {max_model_len}, kv_cache_gib: 1, max_num_seqs: 8}}\n"
        f"routing: {{policy: {policy}{', ' + routing_yaml if routing_yaml else ''}}}\n"
        f"server: {{port: {port}, metrics_port: {metrics_port}, api_keys: [{API_KEY}], "
        f"ready_timeout_s: {START_TIMEOUT_S}}}\n"
        + extra_yaml
    )
    log_path = tmp / "serve.log"
    log = log_path.open("w")
    # Engine metrics reach /metrics every second instead of every ten, so tests
    # that read per-replica counters wait less.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_metrics_report_interval_ms": "1000"}
    env.pop("CACHEROUTE_API_KEYS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--config", str(config)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines, log), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S + 60
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            stop_stack(proc)
            pytest.fail(f"stack not ready in time; log: {log_path}")
        if line == "":
            stop_stack(proc)
            pytest.fail(f"`cacheroute serve` exited ({proc.wait()}) before ready:\n"
                        + log_path.read_text()[-4000:])
        if line.startswith("cacheroute: ready at"):
            break
    base = f"http://127.0.0.1:{port}"
    # The very first request after the ready line: cold prompt, measured.
    t0 = time.perf_counter()
    resp = httpx.post(f"{base}/v1/completions", timeout=600,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": MODEL_ID, "prompt": "The first request after ready: once upon",
                            "max_tokens": 8, "temperature": 0})
    first_s = time.perf_counter() - t0
    resp.raise_for_status()
    return proc, Stack(base, API_KEY, MODEL_ID, model_dir, first_s,
                       resp.json()["choices"][0]["text"], log_path,
                       f"http://127.0.0.1:{metrics_port}/metrics")


def stop_stack(proc: subprocess.Popen) -> None:
    """SIGINT to `cacheroute serve` (it shuts Serve and Ray down), then make sure
    nothing it started outlives the test session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
