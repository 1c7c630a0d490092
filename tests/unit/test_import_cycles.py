"""No import cycles among the project's modules (router, serving, bench, chaos, monitoring).

Read with ast, so nothing is imported: every import statement counts, those inside
functions and TYPE_CHECKING blocks included. A lazy import only postpones a cycle to
the first call; the module graph is the design, and a cycle in it means a helper
lives in the wrong module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("router", "serving", "bench", "chaos", "monitoring")


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, packages under their own name."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module `name` refers to (`a.b.c` may be attribute `c` of `a.b`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, source: str, *, is_package: bool,
               modules: Mapping[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in (_resolve(t, modules) for t in targets) if t)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path.read_text(), is_package=path.name == "__init__.py",
                             modules=modules)
            for name, path in modules.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative: the graph is deep enough to worry the recursion limit.
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_project_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert {"serving.app", "bench.live", "router.policy", "chaos.cli",
            "monitoring.rules"} <= set(graph)
    found = cycles(graph)
    assert not found, "modules importing each other (directly or around a loop):\n" + (
        "\n".join(" <-> ".join(c) for c in found))


def test_lazy_relative_and_type_only_imports_all_count(tmp_path: Path) -> None:
    pkg = tmp_path / "serving"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "a.py").write_text("def f():\n    from serving.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from serving.sub import c\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    (pkg / "d.py").write_text("import serving.a\n")
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    graph = import_graph(tmp_path)
    assert graph["serving.sub.c"] == {"serving.a"}
    assert cycles(graph) == [["serving.a", "serving.b", "serving.sub.c"]]
