"""The CPU compile-cache plugin (serving/replica/compile_cache.py), and the contract
with the pinned vLLM that makes it necessary."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from types import SimpleNamespace

from serving.replica import compile_cache


def _loaded(compiled_fn):
    return SimpleNamespace(_artifacts=SimpleNamespace(compiled_fn=compiled_fn))


def test_a_loaded_plain_function_gets_a_no_op_finalize_loading():
    def compiled(x):
        return x + 1

    load = compile_cache.with_finalize(lambda *a, **k: _loaded(compiled))
    loaded = load("file", f_globals={})
    assert loaded._artifacts.compiled_fn is compiled  # the same function, not a wrapper
    assert compiled.finalize_loading(object()) is None
    assert compiled(1) == 2


def test_a_backend_that_has_finalize_loading_keeps_its_own():
    calls = []

    class Serializable:
        def finalize_loading(self, vllm_config):
            calls.append(vllm_config)

    fn = Serializable()
    load = compile_cache.with_finalize(lambda *a, **k: _loaded(fn))
    load("file")._artifacts.compiled_fn.finalize_loading("cfg")
    assert calls == ["cfg"]


def test_arguments_reach_torchs_loader_unchanged():
    seen = []
    load = compile_cache.with_finalize(lambda *a, **k: seen.append((a, k)) or _loaded(None))
    load("file", f_globals={"g": 1}, external_data=None)
    assert seen == [(("file",), {"f_globals": {"g": 1}, "external_data": None})]


def test_register_wraps_torchs_loader_once(monkeypatch):
    import torch.compiler

    original = torch.compiler.load_compiled_function
    monkeypatch.setattr(torch.compiler, "load_compiled_function", original)
    compile_cache.register()  # the CPU platform here
    once = torch.compiler.load_compiled_function
    compile_cache.register()  # vLLM loads general plugins in several places per process
    assert torch.compiler.load_compiled_function is once
    assert once is not original and once.__wrapped__ is original


def test_the_plugin_is_registered_with_vllm():
    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "serving.replica.compile_cache:register" in names


def test_pinned_vllm_still_needs_it():
    """Contract: vLLM's AOT loader calls finalize_loading on the loaded function, and the
    CPU platform compiles with a backend other than vLLM's own (whose serialisable
    function is the only one with that method). When either stops being true after an
    upgrade, the plugin is dead code: remove it."""
    from vllm.compilation import decorators
    from vllm.platforms import cpu

    loader = inspect.getsource(decorators._try_load_aot_compiled_fn)
    assert "torch.compiler.load_compiled_function(" in loader
    assert "compiled_fn.finalize_loading(" in loader
    platform = inspect.getsource(cpu.CpuPlatform.check_and_update_config)
    assert "CompilationMode.DYNAMO_TRACE_ONCE" in platform
