"""serving.models.folder (marker, lock, rename into place), through builds of the tiny
test model (tests/tiny_model.py), which these tests check too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.models.folder import MARKER_FILE, ModelBuildError
from tests import tiny_model
from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[4]
# One build in a process of its own: progress on stderr, the path last on stdout.
BUILD_IN_A_PROCESS = (
    "import sys; from pathlib import Path; from tests.tiny_model import build_tiny_model; "
    "print(build_tiny_model(Path(sys.argv[1]), progress=lambda m: print(m, file=sys.stderr, flush=True)))"
)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    dest = tmp_path_factory.mktemp("tiny") / "model"
    started = time.monotonic()
    path = build_tiny_model(dest)
    return path, time.monotonic() - started


def test_tiny_model_builds_quickly_into_a_complete_folder(tiny: tuple[Path, float]) -> None:
    path, seconds = tiny
    assert seconds < 60, f"tiny build took {seconds:.1f} s"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_FILE} <= names
    assert "chat_template.jinja" in names
    assert not list(path.parent.glob(".model.tmp-*")), "temporary build folder left behind"


def test_tiny_model_config_is_what_vllm_expects(tiny: tuple[Path, float]) -> None:
    cfg = json.loads((tiny[0] / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["max_position_embeddings"] == 4096
    assert cfg["num_key_value_heads"] == 2 and cfg["num_attention_heads"] == 4
    assert cfg["vocab_size"] == 512
    assert cfg["tie_word_embeddings"] is True
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16"
    assert "quantization_config" not in cfg


def test_tiny_model_loads_with_transformers(tiny: tuple[Path, float]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny[0]
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 10_000_000
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    ids = tok("Hello, world!", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 512)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Numbers 0123456789, tabs\tand\nnew lines.",
        "Unicode survives byte-level BPE: café, naïve, 東京, 🙂",
        "  leading and trailing spaces  ",
    ],
)
def test_tiny_tokenizer_round_trips_text(tiny: tuple[Path, float], text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny[0]))
    ids = tok.encode(text, add_special_tokens=False)
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids) == text


def test_tiny_tokenizer_learned_merges(tiny: tuple[Path, float]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny[0]))
    text = "the request and the cache"
    assert len(tok.encode(text, add_special_tokens=False)) < len(text.encode())


def test_tiny_chat_template_renders_chatml(tiny: tuple[Path, float]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny[0]))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    # Special tokens must be single ids, or the engine could never stop on <|im_end|>.
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    # Loaders that read only tokenizer_config.json see the template too.
    assert json.loads((tiny[0] / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template


def test_second_call_is_a_no_op(tiny: tuple[Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny[0]
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the marker was ignored: the model was built again")

    monkeypatch.setattr(tiny_model, "_write_tiny_model", must_not_build)
    started = time.monotonic()
    assert build_tiny_model(path) == path
    assert time.monotonic() - started < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_build_is_deterministic(tiny: tuple[Path, float], tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    first, second = _files(tiny[0]), _files(again)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two builds"


def test_other_arguments_replace_an_earlier_build(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    build_tiny_model(dest, seed=0, num_layers=2)
    weights_seed0 = (dest / "model.safetensors").read_bytes()
    build_tiny_model(dest, seed=1, num_layers=2)
    marker = json.loads((dest / MARKER_FILE).read_text())
    assert marker["params"]["seed"] == 1
    assert (dest / "model.safetensors").read_bytes() != weights_seed0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.") and not p.name.endswith(".lock")]
    assert leftovers == []


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(ModelBuildError, match="not overwriting"):
        build_tiny_model(dest)
    assert (dest / "notes.txt").read_text() == "keep me"


def test_builds_into_an_existing_empty_folder(tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    assert build_tiny_model(dest, num_layers=1) == dest
    assert (dest / MARKER_FILE).is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 100, "num_heads": 3},
        {"num_heads": 4, "num_kv_heads": 3},
        {"vocab_size": 200},
        {"num_layers": 0},
    ],
)
def test_rejects_impossible_shapes(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_concurrent_builds_build_once(tmp_path: Path) -> None:
    dest = tmp_path / "shared"
    cmd = [sys.executable, "-c", BUILD_IN_A_PROCESS, str(dest)]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip().splitlines()[-1] for out, _ in results] == [str(dest), str(dest)]
    # The second process either waited for the lock or found the finished folder.
    assert sum(err.count("tiny model built") for _, err in results) == 1, results
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared"]




def test_the_seed_reaches_the_build(tmp_path: Path) -> None:
    dest = tmp_path / "seeded"
    assert build_tiny_model(dest, seed=3, num_layers=1) == dest
    assert json.loads((dest / MARKER_FILE).read_text())["params"]["seed"] == 3
