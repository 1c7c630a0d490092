"""A live stack for the chaos tier: 2 replicas of its own, faulted by the drills.

Separate from the integration tier's shared ``stack`` because drills kill and
rescale replicas. ``chaos_stack`` is the integration ``Stack`` plus the Ray
address of the stack's cluster (found from the ``cacheroute serve`` process).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.conftest import Stack, start_stack, stop_stack


@dataclass
class ChaosStack:
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


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    from chaos.cluster import discover_ray_address

    proc, info = start_stack(tmp_path_factory.mktemp("chaos-stack"), replicas=2)
    try:
        yield ChaosStack(info, discover_ray_address(base_url=info.base_url, root_pid=proc.pid))
    finally:
        stop_stack(proc)
