"""A real `redis-server` on a free loopback port, started and stopped by the tests.

No persistence (`--save ''`, no AOF), so every run starts empty and leaves no file
behind. Without the binary the tests skip, unless CI demands it
(`CACHEROUTE_REQUIRE_REDIS=1` or `CACHEROUTE_REQUIRE_DEPLOY_TOOLS=1`): then they fail,
so a CI machine missing Redis cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE_ENV = ("CACHEROUTE_REQUIRE_REDIS", "CACHEROUTE_REQUIRE_DEPLOY_TOOLS")


def redis_required() -> bool:
    return any(os.environ.get(name) == "1" for name in REQUIRE_ENV)


def redis_server_binary() -> str | None:
    """The binary, or None (after failing the test when Redis is required)."""
    binary = shutil.which("redis-server")
    if binary is None and redis_required():
        pytest.fail("redis-server is not installed but CACHEROUTE_REQUIRE_REDIS / "
                    "CACHEROUTE_REQUIRE_DEPLOY_TOOLS demands it: apt-get install redis-server")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def running_redis(binary: str, workdir: Path, *, start_timeout_s: float = 20.0) -> Iterator[str]:
    """Start `redis-server` on loopback; yields its `redis://` URL."""
    port = _free_port()
    log = (workdir / f"redis-{port}.log").open("w")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {log.name}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
