"""Ray's private APIs are reached through serving/ray_private.py alone, and every name it
lists still resolves on the pinned Ray."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import ray_private

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("serving", "bench", "chaos", "router", "monitoring")
ALLOWED = {
    "serving/ray_private.py",
}


def _is_private(dotted: str) -> bool:
    """ray._private, ray.serve._private..., ray.llm._internal...: a component after
    `ray` that starts with an underscore."""
    parts = dotted.split(".")
    return parts[0] == "ray" and any(p.startswith("_") for p in parts[1:])


def private_uses(source: str) -> Iterator[tuple[int, str]]:
    """(line, what) of each private Ray path a module imports or reaches by attribute,
    lazy imports inside functions and TYPE_CHECKING blocks included."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_private(alias.name):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if node.module.split(".")[0] == "ray" and _is_private(dotted):
                    yield node.lineno, dotted
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            # ray._private.worker...: the chain's root is the name `ray`.
            root: ast.expr = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id == "ray":
                yield node.lineno, f"ray...{node.attr}"


def test_the_scan_sees_every_form_of_private_use() -> None:
    source = ("import ray._private.worker\n"
              "from ray.serve._private.common import ReplicaID\n"
              "from ray.serve.context import _get_serve_request_context\n"
              "def f():\n    from ray.llm._internal.x import y\n"
              "port = ray._private.worker.global_worker\n"
              "from ray.serve.request_router import ReplicaID\n")
    assert sorted(line for line, _ in private_uses(source)) == [1, 2, 3, 5, 6]


def test_no_module_but_ray_private_imports_a_private_ray_path() -> None:
    found = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED:
                continue
            found += [f"{rel}:{line} {what}" for line, what in private_uses(path.read_text())]
    assert not found, "import these through serving/ray_private.py:\n" + "\n".join(found)


def test_the_allow_list_names_only_files_that_still_need_it() -> None:
    for rel in sorted(ALLOWED - {"serving/ray_private.py"}):
        assert list(private_uses((ROOT / rel).read_text())), f"{rel}: remove it from ALLOWED"


def test_the_pinned_ray_is_installed_and_named_in_the_docstring() -> None:
    pin = re.search(r'"ray\[serve\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and pin.group(1) == ray_private.RAY_VERSION
    assert importlib.metadata.version("ray") == ray_private.RAY_VERSION
    assert f"Ray {ray_private.RAY_VERSION}" in (ray_private.__doc__ or "")


@pytest.mark.parametrize("name", sorted(ray_private.PRIVATE_NAMES))
def test_each_private_name_resolves_and_is_documented(name: str) -> None:
    module, attribute = ray_private.PRIVATE_NAMES[name]
    assert _is_private(module)
    assert getattr(ray_private, name) is getattr(importlib.import_module(module), attribute)
    doc = ray_private.__doc__ or ""
    assert f"``{name}``" in doc and module in doc, f"{name}: say why no public name serves"


def test_all_lists_exactly_the_private_names_and_the_helpers() -> None:
    assert set(ray_private.__all__) == {*ray_private.PRIVATE_NAMES, "RAY_VERSION",
                                        "serve_request_id", "own_serve_request"}


def test_concurrent_sub_requests_each_get_their_own_request_id() -> None:
    """Legs sent at once under one request must not share Serve's request id (Serve's
    router would assign one of them twice and the other never)."""
    import asyncio

    from ray.serve.context import _set_request_context

    async def leg() -> tuple[str, str]:
        given = ray_private.own_serve_request()
        await asyncio.sleep(0)  # the other legs set theirs meanwhile
        return given, ray_private.serve_request_id()

    async def request() -> tuple[list[tuple[str, str]], str]:
        _set_request_context(_internal_request_id="the-http-request")
        legs = await asyncio.gather(leg(), leg(), leg())
        return legs, ray_private.serve_request_id()

    legs, after = asyncio.run(request())
    assert all(given == seen for given, seen in legs)
    assert len({given for given, _ in legs} | {"the-http-request"}) == 4
    assert after == "the-http-request"  # the request itself keeps its id


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        ray_private.NotARayName  # noqa: B018
