"""The routing core must import with Ray, vLLM, torch, transformers and pyzmq absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

_SCRIPT = r"""
import importlib, pkgutil, sys

BLOCKED = ("ray", "vllm", "torch", "transformers", "zmq")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
for name in BLOCKED:
    sys.modules.pop(name, None)

import router
modules = sorted(
    f"router.{info.name}" for info in pkgutil.iter_modules(router.__path__)
    if info.name != "ray_adapter"  # the Ray adapter is the one module allowed Ray
)
for module in modules:
    importlib.import_module(module)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print(" ".join(modules))
"""


def test_core_modules_import_without_ray_vllm_torch_transformers_or_zmq() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {
        "router.hashing",
        "router.ring",
        "router.load",
        "router.ownership",
        "router.kv_events",
        "router.outcome",
        "router.policy",
        "router.selection",
        "router.membership",
        "router.interface",
        "router.admission",
    } <= imported
