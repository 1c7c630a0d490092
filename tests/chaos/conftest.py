"""The chaos tier: one dedicated 2-replica stack per module, faults injected into it.

The stack is the integration tier's (`start_stack`: `cacheroute serve` as a user runs
it) with a short hang deadline, so a stopped engine is ejected within seconds. Module
scoped, and its fixture is not named `stack`, so tests/integration/conftest.py's
ordering runs these tests before the shared stack starts: never two stacks at once.
"""

from __future__ import annotations

import subprocess
from typing import Iterator

import pytest

from tests.integration.conftest import Stack, start_stack, stop_stack

# An engine with work and no step for this long is ejected: short for the test, still
# far above one step of the tiny model on CPU.
CHAOS_PROGRESS_TIMEOUT_S = 5.0

CHAOS_YAML = (
    f"failover: {{progress_timeout_s: {CHAOS_PROGRESS_TIMEOUT_S}, max_attempts: 4, "
    "backoff_s: 0.2}\n"
)


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, Stack]]:
    proc, info = start_stack(tmp_path_factory.mktemp("chaos"), replicas=2, extra_yaml=CHAOS_YAML)
    try:
        yield proc, info
    finally:
        stop_stack(proc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Same rule as tests/integration/conftest.py (which only applies when that tier is
    # collected too): tests with their own stack first, the shared `stack` last.
    items.sort(key=lambda item: "stack" in getattr(item, "fixturenames", ()))
