"""The live stack, started once per test session and shared.

`cacheroute serve` runs as a subprocess exactly as a user starts it (Ray head, Serve,
2 vLLM CPU replicas of the embedded default model), configured with an API key (tenant
`default`) and three more tenants (`TENANTS`): `acme` and `globex` for the tenant
isolation tests, and a rate-limited `metered` for the admission-limit tests, so the
auth and tenant tests need no second stack. The local-stack starter is
bench/service.py's (the benchmarks and drills start theirs with it too); this module
adds the tier's config
and the `Stack` conveniences. The first completion is sent the moment the ready line
appears and its latency recorded for the readiness test.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from bench.service import (
    ServiceError,
    ServiceProcess,
    code_root,
    first_completion,
    free_port,
    serve_module_command,
    write_config,
)

API_KEY = "test-key-0123456789"  # tenant `default`
# Two more tenants of the shared stack (tests/integration/test_tenants.py); globex's
# small prefix quota makes its eviction test cheap.
ACME_KEY = "test-key-acme-0123456789"
GLOBEX_KEY = "test-key-globex-0123456789"
GLOBEX_MAX_PREFIXES = 2
# A tenant of its own, rate-limited (tests/hostile/test_tenant_limits.py): a token
# every 5 s, so back-to-back requests past its burst are refused however slow the
# machine.
METERED_KEY = "test-metered-key-0123456789"
METERED_BURST = 2
TENANTS = {"acme": {"api_keys": [ACME_KEY]},
           "globex": {"api_keys": [GLOBEX_KEY],
                      "limits": {"max_prefixes": GLOBEX_MAX_PREFIXES}},
           "metered": {"api_keys": [METERED_KEY],
                       "limits": {"requests_per_s": 0.2, "burst": METERED_BURST}}}
MODEL_ID = "smollm2-135m-instruct"
START_TIMEOUT_S = float(os.environ.get("CACHEROUTE_TEST_START_TIMEOUT_S", "900"))
# Engine metrics reach /metrics every second instead of every ten, so tests that read
# per-replica counters wait less.
STACK_ENV = {"RAY_metrics_report_interval_ms": "1000"}
# How long `cacheroute serve` gets to shut Serve and Ray down before its group is killed.
STOP_TIMEOUT_S = 120.0


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

    def as_tenant(self, api_key: str) -> "Stack":
        """The same stack, its clients acting with ``api_key`` (another tenant's)."""
        return dataclasses.replace(self, api_key=api_key)


def start_stack(tmp: Path, *, policy: str = "cacheroute", replicas: int = 2,
                extra_yaml: str = "", routing_yaml: str = "",
                max_model_len: int = 2048,
                address: str | None = None) -> tuple[ServiceProcess, Stack]:
    """``routing_yaml``: more keys of the routing section, as flow-mapping entries
    (``"load_epsilon: 1"``); ``extra_yaml``: more top-level sections; ``address``: an
    existing Ray cluster to deploy onto (`cacheroute serve --address`) instead of a
    local head."""
    from serving.models.default import ensure_default_model

    model_dir = ensure_default_model()
    port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp / "cacheroute.yaml", model_id=MODEL_ID, policy=policy, replicas=replicas,
        port=port, metrics_port=metrics_port, ready_timeout_s=START_TIMEOUT_S,
        max_model_len=max_model_len, api_keys=[API_KEY], tenants=TENANTS,
        routing=yaml.safe_load(f"{{{routing_yaml}}}"), sections=yaml.safe_load(extra_yaml))
    log_path = tmp / "serve.log"
    service = ServiceProcess(config_path=config, policy=policy, port=port, log_path=log_path,
                             start_timeout_s=START_TIMEOUT_S + 60, stop_timeout_s=STOP_TIMEOUT_S,
                             command=serve_module_command(config, address=address),
                             cwd=code_root(),
                             env=STACK_ENV)
    try:
        service.start()
    except ServiceError as err:  # stopped already
        pytest.fail(str(err))
    try:
        # The very first request after the ready line: cold prompt, measured.
        first_s, first_text = first_completion(
            service.base_url, model=MODEL_ID, api_key=API_KEY,
            prompt="The first request after ready: once upon")
    except BaseException:
        service.stop()
        raise
    # Ray's metrics export as the ready line names it: the configured port of a local
    # head, or the export of the node an attached driver joined.
    metrics_url = (service.ready_line or "").rpartition("metrics at ")[2] \
        or f"http://127.0.0.1:{metrics_port}/metrics"
    return service, Stack(service.base_url, API_KEY, MODEL_ID, model_dir, first_s, first_text,
                          log_path, metrics_url)


def stop_stack(service: ServiceProcess) -> None:
    """SIGINT to `cacheroute serve` (it shuts Serve and Ray down), then make sure
    nothing it started outlives the test session."""
    service.stop()
