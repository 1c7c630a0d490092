"""The files of a Hugging Face model folder, written so that every loader reads them alike.

transformers 5 writes some fields under new names only, and a chat template only
beside the tokenizer config; older transformers (other vLLM builds) and other tools
read the old names and the config alone. These helpers add both spellings after
`save_pretrained`, and keep transformers quiet while a builder runs. Used by every
model builder; importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from serving.models.folder import write_json

__all__ = ["finish_llama_config", "finish_tokenizer_config", "quiet_transformers"]


def finish_llama_config(path: Path) -> None:
    """Add the spellings older readers of config.json look for.

    transformers 5 writes `dtype` and `rope_parameters`; transformers 4 (used by
    other vLLM builds) reads `torch_dtype` and a top-level `rope_theta`. Both sets
    are written so the folder loads under either.
    """
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["dtype"] = "bfloat16"
    cfg["torch_dtype"] = "bfloat16"
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg.pop("quantization_config", None)
    write_json(path, cfg)


def finish_tokenizer_config(path: Path, *, chat_template: str, model_max_length: int) -> None:
    """Make tokenizer_config.json self-sufficient and loader-neutral.

    transformers 5 writes the chat template only to chat_template.jinja and names
    its own `TokenizersBackend` class; loaders that read only tokenizer_config.json
    (older transformers, other tools) would then see no template, or an unknown
    class. `PreTrainedTokenizerFast` names the same thing in every version.
    """
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "backend", "name_or_path"):
        cfg.pop(key, None)  # facts about this build machine, not the tokenizer
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = chat_template
    cfg["model_max_length"] = model_max_length
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    write_json(path, cfg)
    (path.parent / "chat_template.jinja").write_text(chat_template, encoding="utf-8")



@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and info logs during a build, then restore them.

    The caller (a CLI, a serving process) gets our one-line progress messages
    instead; its own logging settings are left as they were.
    """
    from transformers.utils import logging as hf_logging

    bars_were_disabled = hf_logging.is_progress_bar_enabled() is False
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # The GGUF converter draws its bar with plain tqdm, which the switch above does
    # not reach (and TQDM_DISABLE is read only when tqdm is imported). Swap in a
    # pass-through for the duration; if transformers moves it, the bar just shows.
    gguf_utils: Any
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = _no_progress_bar
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if not bars_were_disabled:
            hf_logging.enable_progress_bar()


def _no_progress_bar(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable
