"""The tiny test model: a random-weight Llama of a few million parameters.

It has its own small byte-level BPE tokenizer and SmolLM2's ChatML layout: enough
for a real vLLM engine (or the router's tokenizer) to start in seconds in tests,
useless for anything that needs sensible text. Built like every model folder
(serving/models/folder.py: temporary folder, marker, rename) on first use and
returned at once afterwards; weights and tokenizer are a pure function of the
arguments, so every machine sees the same token ids. Only tests use it: the
service and the benchmarks serve the default model (serving/models/default.py).
"""

from __future__ import annotations

import shutil
import tempfile
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
    read_marker,
    remove_stale_temps,
    silent,
    write_json,
)
from serving.models.hf_folder import (
    finish_llama_config,
    finish_tokenizer_config,
    quiet_transformers,
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
    report = progress or silent
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
    if marker_matches(dest, expected):
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(dest, report):
        if marker_matches(dest, expected):
            return dest
        if dest.exists() and not dest.is_dir():
            raise ModelBuildError(f"{dest} exists and is not a folder")
        if dest.is_dir() and any(dest.iterdir()) and read_marker(dest) is None:
            raise ModelBuildError(f"{dest} is a non-empty folder that is not a cacheroute model; not overwriting it")
        remove_stale_temps(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            out = tmp / "model"
            out.mkdir()
            report(f"building tiny model ({hidden_size} hidden, {num_layers} layers, vocab {vocab_size})")
            info = _write_tiny_model(out, **params)
            write_json(out / MARKER_FILE, {**expected, **info})
            publish(out, dest, replace_foreign=False)
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
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

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

    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    finish_llama_config(out / "config.json")
    finish_tokenizer_config(
        out / "tokenizer_config.json",
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=max_position_embeddings,
    )
    n_params = sum(p.numel() for p in model.parameters())
    return {"parameters": str(n_params), "transformers": transformers.__version__, "torch": torch.__version__}
