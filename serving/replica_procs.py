"""The OS processes of a local stack's engines, for fault drills and chaos tests.

A local `cacheroute serve` starts Ray's head from its own process, so every Ray
process of that stack descends from it: raylet -> `ray::ServeReplica:<app>:LLMServer:...`
(one per replica) -> `VLLM::EngineCore` (that replica's engine, a child process).
Killing the engine (SIGKILL) is an engine crash: its replica fails in-flight requests
with EngineDeadError and Serve's health check replaces the replica. Stopping it
(SIGSTOP) is a hang: the replica stays up and healthy to Serve, but its engine makes
no progress, which the router detects (serving/replica/engine_progress.py).

Reads /proc through psutil (a Ray dependency); O(descendants of the root).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

ENGINE_PROCESS_NAME = "VLLM::EngineCore"
REPLICA_PROCESS_MARK = "ServeReplica:"


@dataclass(frozen=True)
class EngineProcess:
    engine_pid: int
    # The Serve replica actor's process (the engine's parent).
    replica_pid: int
    # The replica actor's process title, e.g. `ray::ServeReplica:cacheroute:LLMServer:m`.
    replica_title: str


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def engine_processes(root_pid: int) -> list[EngineProcess]:
    """Every live vLLM engine process below `root_pid` (the `cacheroute serve`
    process), with its replica's process; sorted by engine pid."""
    try:
        root = psutil.Process(root_pid)
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in descendants:
        if ENGINE_PROCESS_NAME not in _title(proc):
            continue
        try:
            parent = proc.parent()
        except psutil.NoSuchProcess:
            continue
        if parent is None or proc.status() == psutil.STATUS_ZOMBIE:
            continue
        title = _title(parent)
        if REPLICA_PROCESS_MARK in title:
            found.append(EngineProcess(proc.pid, parent.pid, title))
    return sorted(found, key=lambda e: e.engine_pid)
