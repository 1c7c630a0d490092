"""Fixtures shared by the live tiers (integration, hostile, faults): one live stack per
session, started on first use, and the order that keeps two stacks from running at once."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.integration.conftest import Stack, start_stack, stop_stack
from tests.redis_server import redis_server_binary, running_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A redis-server holding the stack's prefix registry; None (the in-process store)
    where the binary is missing and CI does not require it (tests/redis_server.py)."""
    binary = redis_server_binary()
    if binary is None:
        yield None
        return
    with running_redis(binary, tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str | None) -> Iterator[Stack]:
    extra = f"prefixes: {{redis_url: '{redis_url}'}}\n" if redis_url else ""
    proc, info = start_stack(tmp_path_factory.mktemp("stack"), extra_yaml=extra)
    try:
        yield info
    finally:
        stop_stack(proc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests that start their own engine before the shared stack starts, so the
    machine never runs both at once (the stack lives until the session ends)."""
    items.sort(key=lambda item: "stack" in getattr(item, "fixturenames", ()))
