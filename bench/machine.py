"""What machine a benchmark ran on, recorded beside every result.

A latency number without its machine cannot be compared with anything, and on a
shared host the load average at start says whether other work was competing.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The ``model name`` of the first CPU in /proc/cpuinfo ('unknown' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def git_revision() -> str:
    """HEAD of the repository, with ``+dirty`` when the tree has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=_REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "nproc": usable_cpus(),
        "cpu_model": cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "git_revision": git_revision(),
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a report header."""
    load = info.get("loadavg_at_start") or []
    load_text = f", load average {load[0]:.2f}" if load else ""
    return (f"{info['nproc']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, "
            f"Python {info['python']}{load_text}, rev {info['git_revision']}")


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None
