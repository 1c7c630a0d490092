"""The chaos tier: one dedicated 2-replica stack for the whole tier, faults injected into it.

The stack is the integration tier's (`start_stack`: `cacheroute serve` as a user runs
it) with a short hang deadline, so a stopped engine is ejected within seconds. It is
separate from the integration tier's shared ``stack`` because these tests kill, stop
and replace replicas. Package scoped, and its fixture is not named `stack`, so the
ordering in tests/conftest.py runs this tier before the shared
stack starts: never two stacks at once. ``chaos_stack`` carries the `cacheroute serve`
process (to find engine processes) and the Ray address of its cluster (for the drills).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bench.service import ServiceProcess
from tests.integration.conftest import Stack, start_stack, stop_stack

# An engine with work and no step for this long is ejected: short for the test, still
# far above one step of the tiny model on CPU.
CHAOS_PROGRESS_TIMEOUT_S = 5.0

CHAOS_YAML = (
    f"failover: {{progress_timeout_s: {CHAOS_PROGRESS_TIMEOUT_S}, max_attempts: 4, "
    "backoff_s: 0.2}\n"
)


@dataclass
class ChaosStack:
    proc: ServiceProcess
    stack: Stack
    ray_address: str

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def api_key(self) -> str:
        return self.stack.api_key

    @property
    def model(self) -> str:
        return self.stack.model


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    from chaos.cluster import discover_ray_address

    proc, info = start_stack(tmp_path_factory.mktemp("chaos"), replicas=2, extra_yaml=CHAOS_YAML)
    try:
        yield ChaosStack(proc, info, discover_ray_address(base_url=info.base_url,
                                                          root_pid=proc.pid))
    finally:
        stop_stack(proc)
