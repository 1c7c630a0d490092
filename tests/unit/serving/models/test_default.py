"""Tests for serving.models: the default model's paths, its fast path and command line,
and the built default model (when this machine has built it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.models import cli, default
from serving.models.default import (
    MARKER_FILE,
    default_cache_dir,
    default_model_path,
    ensure_default_model,
)

# --------------------------------------------------------------------------- paths, fast path, CLI


def _finished_default_model(cache_dir: Path) -> Path:
    """A marker as a finished build leaves it: `ensure_default_model` returns at once."""
    target = default_model_path(cache_dir)
    target.mkdir(parents=True)
    marker = {"format_version": default.FORMAT_VERSION, "source_sha256": default._WHEEL_SHA256, "kind": "default"}
    (target / MARKER_FILE).write_text(json.dumps(marker))
    return target


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHEROUTE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert default_model_path() == tmp_path / "c" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("CACHEROUTE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "cacheroute"


def test_finished_default_model_is_returned_without_importing_torch(tmp_path: Path) -> None:
    target = _finished_default_model(tmp_path)
    code = (
        "import sys; from pathlib import Path; from serving.models.default import ensure_default_model; "
        f"p = ensure_default_model(Path({str(tmp_path)!r})); "
        "print(p); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(target), "[]"]


def test_import_is_cheap() -> None:
    code = (
        "import sys, serving.models.default, serving.models.folder, serving.models.hf_folder, serving.models.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_default_prints_the_path_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = _finished_default_model(tmp_path)
    assert cli.main(["default", "--cache-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(target)


def test_cli_errors_are_one_line_with_status_2(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    # A build error, an unknown command, the test model's former command, no command.
    for args in (["default", "--cache-dir", str(not_a_folder)], ["bogus"], ["tiny"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "serving.models", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""


# --------------------------------------------------------------------------- default model (if built)


def _built_default_model() -> Path:
    path = default_model_path()
    if not (path / MARKER_FILE).is_file():
        pytest.skip(f"default model not built at {path} (run: python -m serving.models default)")
    return path


def test_default_model_config() -> None:
    path = _built_default_model()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_hidden_layers"] == 30
    assert cfg["hidden_size"] == 576
    assert cfg["num_attention_heads"] == 9
    assert cfg["num_key_value_heads"] == 3
    assert cfg["vocab_size"] == 49152
    assert cfg["max_position_embeddings"] == 8192
    assert cfg["tie_word_embeddings"] is True
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16"
    assert "quantization_config" not in cfg
    # The weights really are bfloat16 (read the safetensors header, not the tensors).
    with (path / "model.safetensors").open("rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"BF16"}
    assert "lm_head.weight" not in header  # tied to the embeddings
    assert ensure_default_model() == path  # marker honoured


def test_default_model_chat_template() -> None:
    from transformers import AutoTokenizer

    path = _built_default_model()
    tok = AutoTokenizer.from_pretrained(str(path))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    assert "<|im_start|>" in json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in (path / "chat_template.jinja").read_text()
