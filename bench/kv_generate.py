"""One ``kvbench`` mode: the conversation generated greedily with transformers, timed per turn.

Both modes feed the model the same token stream: the first turn's chat-template
text, then per turn the generated tokens as they came out and the template text
that closes the reply and opens the next user turn (``ChatTokens``). Each turn
generates exactly ``new_tokens`` tokens by argmax; end-of-turn tokens are masked
(like ``min_new_tokens``) so that every turn and mode does the same work.

* ``use_cache=True`` (``_CachedDecoder``): one ``DynamicCache`` lives across all
  turns. A turn's first forward pass prefills only what the cache lacks (the
  previous turn's last generated token, which was sampled but never fed back,
  plus the new template text); each further token is a one-token forward pass.
  Cost per turn: O(new tokens x context) attention, O(new tokens) MLP.
* ``use_cache=False`` (``_RecomputeDecoder``): every generated token runs the
  whole sequence again with ``use_cache=False``. Cost per token: O(context^2)
  attention, O(context) MLP, so a turn costs O(new tokens x context^2).

Both ask for the last position's logits only (``logits_to_keep=1``), so the
difference is the cache alone, not a vocabulary projection over the whole prompt.

Timing (``time.perf_counter``, model calls only, after one untimed warm-up pass):
``ttft_s`` is from the turn's first forward call to the first new token's id;
``tpot_s`` is the mean time of the remaining ``new_tokens - 1`` tokens;
``ttft_cpu_s`` and ``tpot_cpu_s`` are the same spans in process CPU time
(``time.process_time``), which other load on a shared machine disturbs far less.
Memory: ``peak_rss_bytes`` is ``getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's
high-water mark of this process's resident set (model weights included). Loading
the model peaks higher than anything after it (the checkpoint's bfloat16 tensors
and their float32 copies are resident together), so once the model is loaded and
warmed up the mark is lowered to the current RSS (Linux: ``5`` written to
``/proc/self/clear_refs``; ``meta["peak_rss_reset"]`` says whether that worked).
The peak is still monotone within a process, so each mode runs in a fresh child
process (``run_mode_in_subprocess``; entry point
``python -m bench.kv_generate SPEC OUT``). ``peak_rss_growth_bytes`` is the peak's
rise since that reset, what the conversation added; ``rss_bytes`` is the resident
set at the end of the turn (``/proc/self/statm``). Both include what the
allocators keep after frees, so they show the KV cache only once it outgrows
memory already freed by earlier steps.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.kv_conversation import KVBENCH_SEED, Conversation, make_conversation
from bench.kv_size import KVShape, cache_bytes, kv_shape

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class ModeSpec:
    model: str
    use_cache: bool
    turns: int
    new_tokens: int
    # float32 by default: CPU kernels are fastest there without AMX, and the two
    # modes' greedy texts stay identical (bfloat16 rounding can flip an argmax).
    dtype: str = "float32"
    seed: int = KVBENCH_SEED
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 (TTFT plus per-token time), "
                             f"got {self.new_tokens}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype}")


@dataclass(frozen=True, kw_only=True)
class TurnRecord:
    use_cache: bool
    turn: int
    # Tokens of the whole conversation when the turn's first forward pass starts.
    context_tokens: int
    # Tokens that pass went over: the new ones with the cache, all of them without.
    prefill_tokens: int
    generated_tokens: int
    kv_cache_tokens: int
    kv_cache_bytes: int
    # 2 x layers x kv_heads x head_dim x kv_cache_tokens x dtype bytes.
    kv_formula_bytes: int
    ttft_s: float
    tpot_s: float
    turn_s: float
    # The same two spans in process CPU time (all threads): on a shared machine this
    # moves far less than wall time when other work takes the cores.
    ttft_cpu_s: float
    tpot_cpu_s: float
    rss_bytes: int
    peak_rss_bytes: int
    # peak_rss_bytes minus the mark before turn 1 (model loaded, warm-up done).
    peak_rss_growth_bytes: int
    text: str


@dataclass(frozen=True, kw_only=True)
class ModeResult:
    records: tuple[TurnRecord, ...]
    kv_shape: KVShape
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(model: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer); transformers' progress bars off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    return lm, tokenizer


class ChatTokens:
    """The conversation's token ids, extended turn by turn.

    A new turn's tokens are the chat template's text for the whole conversation
    minus the text already held (previous prompts and replies as generated). If a
    template rewrites earlier turns so that its text no longer extends what is held,
    the part after the common prefix is appended: the stream then differs from the
    template's own, but both modes still see identical tokens.
    """

    def __init__(self, tokenizer: Any, system: str) -> None:
        self._tokenizer = tokenizer
        self._messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        self._text = ""
        self._has_template = bool(getattr(tokenizer, "chat_template", None))
        self.ids: list[int] = []

    def add_user_turn(self, content: str) -> list[int]:
        self._messages.append({"role": "user", "content": content})
        full = self._render()
        held = os.path.commonprefix([full, self._text])
        segment = full[len(held):]
        # A chat template writes its own special tokens; a plain transcript gets the
        # tokenizer's (BOS) once, at the start.
        plain_start = not self.ids and not self._has_template
        new_ids = list(self._tokenizer(segment, add_special_tokens=plain_start)["input_ids"])
        self._text += segment
        self.ids += new_ids
        return new_ids

    def add_reply(self, token_ids: Sequence[int]) -> str:
        text = str(self._tokenizer.decode(list(token_ids), skip_special_tokens=False))
        self._messages.append({"role": "assistant",
                               "content": self._tokenizer.decode(list(token_ids),
                                                                 skip_special_tokens=True)})
        self._text += text
        self.ids += list(token_ids)
        return text

    def _render(self) -> str:
        if self._has_template:
            return str(self._tokenizer.apply_chat_template(
                self._messages, tokenize=False, add_generation_prompt=True))
        # Base models without a template: a plain transcript.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in self._messages]
        return "\n".join(lines) + "\nAssistant:"


class _CachedDecoder:
    """Keeps one DynamicCache across turns; a forward pass feeds only uncached tokens."""

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self._model = model
        self.cache = DynamicCache(config=model.config)

    def step(self, ids: Sequence[int]) -> Any:
        import torch

        out = self._model(input_ids=torch.tensor([list(ids)]), past_key_values=self.cache,
                          use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


class _RecomputeDecoder:
    """No cache: every step runs the whole sequence."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def step(self, ids: Sequence[int]) -> Any:
        import torch

        out = self._model(input_ids=torch.tensor([list(ids)]), use_cache=False,
                          logits_to_keep=1)
        return out.logits[0, -1]


def _banned_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (getattr(model.generation_config, "eos_token_id", None),
                   tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return sorted(ids)


def rss_bytes() -> int:
    """Resident set size now (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _load_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Lower the kernel's peak-RSS mark to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def run_mode(spec: ModeSpec, *, model: Any = None, tokenizer: Any = None,
             conversation: Conversation | None = None,
             progress: Callable[[str], None] = lambda _: None) -> ModeResult:
    """Hold the conversation in one mode; ``model``/``tokenizer`` default to ``spec.model``."""
    import torch

    threads_before = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    try:
        return _run_mode(spec, model=model, tokenizer=tokenizer, conversation=conversation,
                         progress=progress)
    finally:
        torch.set_num_threads(threads_before)  # an in-process caller keeps its setting


def _run_mode(spec: ModeSpec, *, model: Any, tokenizer: Any,
              conversation: Conversation | None,
              progress: Callable[[str], None]) -> ModeResult:
    import torch
    import transformers

    torch.manual_seed(spec.seed)
    load_start = _load_1min()
    if model is None or tokenizer is None:
        model, tokenizer = load_model(spec.model, spec.dtype)
    conversation = conversation or make_conversation(spec.turns, seed=spec.seed)
    turns = conversation.user_turns[:spec.turns]
    shape = kv_shape(model.config, dtype_bytes=next(model.parameters()).element_size())
    banned = torch.tensor(_banned_token_ids(model, tokenizer), dtype=torch.long)
    chat = ChatTokens(tokenizer, conversation.system)
    decoder: _CachedDecoder | _RecomputeDecoder = (
        _CachedDecoder(model) if spec.use_cache else _RecomputeDecoder(model))
    cached = decoder if isinstance(decoder, _CachedDecoder) else None
    mode = "cache" if spec.use_cache else "no-cache"
    records: list[TurnRecord] = []
    with torch.inference_mode():
        # Untimed warm-up: the first call on CPU builds kernels and allocator pools.
        _RecomputeDecoder(model).step(tokenizer(conversation.system)["input_ids"][:32] or [0])
        peak_load = peak_rss_bytes()
        peak_reset = reset_peak_rss()
        peak_before = peak_rss_bytes()
        rss_start = rss_bytes()
        unfed: list[int] = []
        for number, user_text in enumerate(turns, start=1):
            new_ids = chat.add_user_turn(user_text)
            context = len(chat.ids)
            inputs = [*unfed, *new_ids] if cached is not None else list(chat.ids)
            prefill = len(inputs)
            generated: list[int] = []
            step_ends: list[float] = []
            cpu_ends: list[float] = []
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(spec.new_tokens):
                logits = decoder.step(inputs)
                if banned.numel():
                    logits[banned] = float("-inf")
                token = int(torch.argmax(logits).item())
                step_ends.append(time.perf_counter())
                cpu_ends.append(time.process_time())
                generated.append(token)
                inputs = [token] if cached is not None else [*inputs, token]
            unfed = [generated[-1]]
            text = chat.add_reply(generated)
            kv_tokens = cached.cache.get_seq_length() if cached is not None else 0
            kv_bytes = cache_bytes(cached.cache) if cached is not None else 0
            if cached is not None and kv_tokens != len(chat.ids) - 1:
                raise RuntimeError(f"cache holds {kv_tokens} tokens, expected "
                                   f"{len(chat.ids) - 1} (all but the last generated)")
            record = TurnRecord(
                use_cache=spec.use_cache, turn=number, context_tokens=context,
                prefill_tokens=prefill, generated_tokens=len(generated),
                kv_cache_tokens=kv_tokens, kv_cache_bytes=kv_bytes,
                kv_formula_bytes=shape.bytes_for(kv_tokens),
                ttft_s=step_ends[0] - start,
                tpot_s=(step_ends[-1] - step_ends[0]) / (len(step_ends) - 1),
                turn_s=step_ends[-1] - start,
                ttft_cpu_s=cpu_ends[0] - cpu_start,
                tpot_cpu_s=(cpu_ends[-1] - cpu_ends[0]) / (len(cpu_ends) - 1),
                rss_bytes=rss_bytes(), peak_rss_bytes=(peak := peak_rss_bytes()),
                peak_rss_growth_bytes=peak - peak_before, text=text)
            records.append(record)
            progress(f"[{mode}] turn {number}/{len(turns)}: {context} tokens, "
                     f"TTFT {record.ttft_s * 1e3:.0f} ms, {record.tpot_s * 1e3:.1f} ms/token, "
                     f"KV {kv_bytes / 2**20:.1f} MiB")
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "dtype": spec.dtype,
            "peak_rss_load_bytes": peak_load, "peak_rss_reset": peak_reset,
            "rss_after_load_bytes": rss_start,
            "loadavg_1min_start": load_start, "loadavg_1min_end": _load_1min(),
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    return ModeResult(records=tuple(records), kv_shape=shape, meta=meta)


# --------------------------------------------------------------------------- child process


class ModeFailed(RuntimeError):
    """The child process for one mode failed; the message is its last stderr line."""


def result_json(result: ModeResult) -> dict[str, Any]:
    return {"records": [asdict(r) for r in result.records], "kv_shape": asdict(result.kv_shape),
            "meta": result.meta}


def result_from_json(data: dict[str, Any]) -> ModeResult:
    return ModeResult(records=tuple(TurnRecord(**r) for r in data["records"]),
                      kv_shape=KVShape(**data["kv_shape"]), meta=dict(data["meta"]))


def run_mode_in_subprocess(spec: ModeSpec, *, workdir: Path,
                           echo: Callable[[str], None] = lambda _: None) -> ModeResult:
    """``run_mode`` in a fresh interpreter, so its peak RSS is its own."""
    name = "cache" if spec.use_cache else "no-cache"
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / f"spec-{name}.json", workdir / f"result-{name}.json"
    spec_path.write_text(json.dumps(asdict(spec)), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen([sys.executable, "-m", "bench.kv_generate", str(spec_path),
                           str(out_path)], env=env, text=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
        assert child.stderr is not None
        for line in child.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            echo(line)
        code = child.wait()
    if code != 0 or not out_path.exists():
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        raise ModeFailed(f"{name} run exited with status {code}: {last.strip()}")
    return result_from_json(json.loads(out_path.read_text(encoding="utf-8")))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.kv_generate SPEC_JSON OUT_JSON", file=sys.stderr)
        return 2
    spec = ModeSpec(**json.loads(Path(args[0]).read_text(encoding="utf-8")))
    result = run_mode(spec, progress=lambda m: print(m, file=sys.stderr, flush=True))
    Path(args[1]).write_text(json.dumps(result_json(result)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
