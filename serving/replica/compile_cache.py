"""Let a CPU engine load the compiled model it saved on its last start.

vLLM compiles the model on every engine start unless it can load the artefact it
saved before (``~/.cache/vllm/torch_compile_cache/torch_aot_compile/<hash>/``). On
the CPU platform vLLM 0.32 compiles in ``DYNAMO_TRACE_ONCE`` mode with plain
inductor, and the loader (``vllm.compilation.decorators._try_load_aot_compiled_fn``)
then calls ``finalize_loading`` on the loaded function: a method only vLLM's own GPU
compile backend has. The call raises, the loader logs "Compiling model again due to a
load failure ... 'function' object has no attribute 'finalize_loading'", and every
start pays the whole compile again (about a minute per engine on a 2-core machine).

There is nothing to finalize for an inductor-compiled function: it is complete when
deserialised. So this plugin wraps ``torch.compiler.load_compiled_function`` and
gives such a function a no-op ``finalize_loading``; the loader then takes the saved
artefact ("Directly load AOT compilation from path ..."). A changed model, config or
vLLM source still changes the artefact's hash or fails vLLM's own source check, so a
stale artefact is never used.

Loaded by vLLM in every process of an engine (``vllm.general_plugins`` entry point in
pyproject.toml), possibly several times per process: idempotent. It does nothing off
the CPU platform, where vLLM's backend has the method. The pinned vLLM's use of the
method is contract-tested (tests/unit/serving/replica/test_compile_cache.py): when an
upgrade stops calling it, this module should go.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

_MARK = "_cacheroute_finalize_patch"


def _nothing_to_finalize(vllm_config: Any) -> None:
    """An inductor-compiled function is complete once deserialised."""


def with_finalize(load: Callable[..., Any]) -> Callable[..., Any]:
    """``load`` (torch's ``load_compiled_function``), giving a loaded function that lacks
    ``finalize_loading`` a no-op one."""

    @functools.wraps(load)
    def load_compiled_function(*args: Any, **kwargs: Any) -> Any:
        loaded = load(*args, **kwargs)
        compiled = getattr(getattr(loaded, "_artifacts", None), "compiled_fn", None)
        if compiled is not None and not hasattr(compiled, "finalize_loading"):
            try:
                compiled.finalize_loading = _nothing_to_finalize
            except AttributeError:  # an object without a __dict__: leave vLLM's fallback
                pass
        return loaded

    setattr(load_compiled_function, _MARK, True)
    return load_compiled_function


def register() -> None:
    """The ``vllm.general_plugins`` entry point."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import torch.compiler

    if not getattr(torch.compiler.load_compiled_function, _MARK, False):
        torch.compiler.load_compiled_function = with_finalize(
            torch.compiler.load_compiled_function)
