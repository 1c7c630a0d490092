"""The routing core's facade: ``router.__all__`` is exactly what serving/ and bench/ import.

Every ``from router import ...`` in those packages names members of ``router.__all__``.
One exception: the KV-event wire structs (vLLM's field-for-field mirror) may be
imported from ``router.kv_events``, where they live beside ``decode_batch``; the
simulator builds batches of them as the engines publish them. Nothing else is
imported from a submodule, and no submodule is imported whole.
"""

from __future__ import annotations

import ast
from pathlib import Path

import router

REPO_ROOT = Path(__file__).resolve().parents[3]
# The KV-event wire structs, importable from router.kv_events (module docstring).
WIRE_STRUCTS = frozenset({"AllBlocksCleared", "BlockRemoved", "BlockStored", "KVEventBatch"})


def _router_imports() -> list[tuple[str, int, str, list[str]]]:
    """(file, line, module, names) of every import of the router package or its
    submodules in serving/ and bench/."""
    found = []
    for package in ("serving", "bench"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            where = str(path.relative_to(REPO_ROOT))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                        node.module == "router" or node.module.startswith("router.")):
                    found.append((where, node.lineno, node.module,
                                  [alias.name for alias in node.names]))
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("router."):
                            found.append((where, node.lineno, alias.name, ["*"]))
    return found


def test_every_name_in_all_exists() -> None:
    assert len(set(router.__all__)) == len(router.__all__)
    missing = [name for name in router.__all__ if not hasattr(router, name)]
    assert not missing, missing


def test_serving_and_bench_import_only_the_facade_and_the_wire_structs() -> None:
    imports = _router_imports()
    assert any(module == "router" for _, _, module, _ in imports)  # the scan sees them
    public = set(router.__all__)
    wrong = []
    for where, line, module, names in imports:
        allowed = public if module == "router" else (
            WIRE_STRUCTS if module == "router.kv_events" else frozenset())
        wrong += [f"{where}:{line}: {module}.{name}" for name in names if name not in allowed]
    assert not wrong, "\n".join(wrong)


def _protocol_members() -> set[str]:
    members: set[str] = set()
    for protocol in (router.RoutingPolicy, router.AdmissionPolicy, router.FleetEvents,
                     router.PrefixReads):
        for cls in protocol.__mro__:
            if cls.__module__ == "router.interface":
                members |= {name for name in vars(cls) if not name.startswith("_")}
    return members


def test_the_routers_call_on_the_policy_only_what_the_core_protocols_name() -> None:
    """What serving/routing/ (Serve's routers, the only holders of the routing core)
    does with a policy (``policy.x``, ``self._policy.x``, ``router.policy.x``) is a
    member of ``RoutingPolicy``, ``AdmissionPolicy``, ``FleetEvents`` or
    ``PrefixReads`` (router/interface.py), never an internal."""
    allowed = _protocol_members()
    assert {"select", "set_replicas", "placement", "commit"} <= allowed
    used = set()
    for path in sorted((REPO_ROOT / "serving" / "routing").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in ("policy", "_policy")) or (
                    isinstance(owner, ast.Attribute) and owner.attr in ("policy", "_policy")):
                used.add((str(path.relative_to(REPO_ROOT)), node.attr))
    assert {attr for _, attr in used} >= {"set_replicas", "placement"}  # the scan sees them
    wrong = sorted(f"{where}: policy.{attr}" for where, attr in used if attr not in allowed)
    assert not wrong, "\n".join(wrong)
