"""A modelled vLLM engine: a step loop over a KV block cache, as vLLM v1 schedules.

One replica runs *steps*, one after the other (a CPU or GPU runs one forward pass
at a time). Each step, like vLLM v1's scheduler:

1. gives every running request its next tokens, in admission order, within a
   budget of ``max_num_batched_tokens``: one token to a decoding request, the
   next chunk of its uncached prompt to a prefilling one (chunked prefill);
2. admits waiting requests, first come first served, while budget is left, fewer
   than ``max_num_seqs`` run and the request's blocks fit in the cache
   (``block_cache.py``); a request that does not fit holds up those behind it.
   Admission looks the prompt up in the cache: only the uncached tokens are
   prefilled;
3. lasts ``step_overhead_s + prefill_s_per_token x prefilled tokens +
   decode_s_per_seq x decoding requests``.

A request's first token comes at the end of the step that finishes its prefill
(TTFT = router hold + engine queue + prefill steps); it leaves, unpinning its
blocks, at the end of the step that produces its last token. Decoding shares
steps with other requests' prefill, so on a slow engine a long miss stalls every
running request's decode, as it does on vLLM CPU.

The engine holds no clock: the event loop (``loop.py``) calls ``kick`` with the
current time and schedules the step end it returns.

``kv_capacity_blocks`` turns a KV-cache size in bytes into blocks with the
model's geometry (``bench/kv_size.py``): ``2 x layers x kv_heads x head_dim x
dtype bytes x block_size`` bytes a block. For SmolLM2-135M (30 layers, 3 KV
heads of 64, bfloat16) and 128-token blocks that is 2,949,120 bytes, so the live
benchmark's 1 GiB holds 364 blocks (46,592 tokens).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from bench.sim.block_cache import Allocation, BlockCache
from bench.sim.prompts import SimRequest


@dataclass(frozen=True, kw_only=True)
class EngineParams:
    """One replica's speed and size; defaults are the fit to the live CPU run
    (docs/benchmarks/simulator.md)."""

    block_size: int = 128
    # KV cache size in blocks: 1 GiB of SmolLM2-135M at block 128 (module docstring).
    kv_capacity_blocks: int = 364
    # vLLM's max_num_seqs: requests running at once (the live config's 8).
    max_num_seqs: int = 8
    # Tokens per step: vLLM's CPU default for a served model (2,048).
    max_num_batched_tokens: int = 2048
    # Seconds per prompt token prefilled in a step (compute-bound). Fitted: 4.5 ms on
    # the live run's 2 shared cores (SmolLM2-135M, vLLM CPU).
    prefill_s_per_token: float = 0.0045
    # Seconds per decoding request in a step. Fitted: 0 (lost in the step overhead).
    decode_s_per_seq: float = 0.0
    # Fixed seconds per step (scheduling, sampling, the pass's fixed cost). Fitted: 80 ms.
    step_overhead_s: float = 0.08

    def __post_init__(self) -> None:
        for name in ("block_size", "kv_capacity_blocks", "max_num_seqs",
                     "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prefill_s_per_token", "decode_s_per_seq", "step_overhead_s"):
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.step_overhead_s + self.prefill_s_per_token + self.decode_s_per_seq <= 0:
            raise ValueError("a step must take some time: set a cost above 0")


# The KV geometry fields of SmolLM2-135M-Instruct's config.json (the default model).
SMOLLM2_135M_GEOMETRY: dict[str, object] = {
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "head_dim": 64, "hidden_size": 576,
}


def kv_capacity_blocks(kv_cache_bytes: int,
                       model_config: Path | Mapping[str, object] = SMOLLM2_135M_GEOMETRY, *,
                       block_size: int, dtype_bytes: int = 2) -> int:
    """Whole KV blocks that fit in ``kv_cache_bytes`` for the model of ``model_config``
    (a ``config.json`` path or its parsed dict; default SmolLM2-135M)."""
    from bench.kv_size import kv_shape

    raw = (json.loads(Path(model_config).read_text()) if isinstance(model_config, Path)
           else model_config)
    shape = kv_shape(SimpleNamespace(**raw), dtype_bytes=dtype_bytes)
    return kv_cache_bytes // shape.bytes_for(block_size)


@dataclass(slots=True, eq=False)
class Running:
    """An admitted request and its progress."""

    request: SimRequest
    engine_index: int
    allocation: Allocation
    # Prompt tokens the cache supplied (whole blocks).
    cached_tokens: int
    # Uncached prompt tokens still to prefill; 0 once decoding.
    to_prefill: int
    generated: int = 0
    # Tokens scheduled in the current step.
    chunk: int = 0


# Called with (replica index, allocation) when an admission caches or evicts
# blocks: the engine's KV events.
KVListener = Callable[[int, Allocation], None]


class SimEngine:
    """One replica's engine; driven by ``loop``, not thread-safe."""

    __slots__ = ("_busy", "_on_kv", "_params", "_running", "_scheduled", "_waiting", "cache",
                 "index")

    def __init__(self, index: int, params: EngineParams, *,
                 on_kv: KVListener | None = None) -> None:
        self.index = index
        self._params = params
        self._on_kv = on_kv
        self.cache = BlockCache(params.kv_capacity_blocks)
        self._waiting: deque[SimRequest] = deque()
        self._running: list[Running] = []
        self._scheduled: list[Running] = []
        self._busy = False

    @property
    def block_size(self) -> int:
        return self._params.block_size

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def blocks_needed(self, request: SimRequest) -> int:
        """All blocks a request pins while it runs: prompt and generated tokens."""
        return -(-(request.prompt_tokens + request.output_tokens) // self._params.block_size)

    def submit(self, request: SimRequest) -> None:
        if self.blocks_needed(request) > self._params.kv_capacity_blocks:
            raise ValueError(
                f"request {request.index} needs {self.blocks_needed(request)} KV blocks; "
                f"a replica holds {self._params.kv_capacity_blocks} (raise the KV capacity)")
        self._waiting.append(request)

    def kick(self, now_s: float) -> float | None:
        """Start a step if idle and there is work; returns when it ends."""
        if self._busy:
            return None
        params = self._params
        budget = params.max_num_batched_tokens
        prefill = decode = 0
        scheduled = self._scheduled = []
        running = self._running
        for seq in running:
            if budget == 0:
                break
            if seq.to_prefill:
                chunk = min(budget, seq.to_prefill)
                prefill += chunk
            else:
                chunk = 1
                decode += 1
            seq.chunk = chunk
            budget -= chunk
            scheduled.append(seq)
        waiting = self._waiting
        while waiting and budget > 0 and len(running) < params.max_num_seqs:
            request = waiting[0]
            hashes = request.block_hashes
            max_hits = max(request.prompt_tokens - 1, 0) // params.block_size
            allocation = self.cache.allocate(hashes, self.blocks_needed(request) - len(hashes),
                                             max_hits)
            if allocation is None:
                break  # FCFS: the head waits for blocks, and so does everyone behind it
            waiting.popleft()
            if self._on_kv is not None and (allocation.stored or allocation.evicted):
                self._on_kv(self.index, allocation)
            cached = allocation.hit_blocks * params.block_size
            seq = Running(request=request, engine_index=self.index, allocation=allocation,
                          cached_tokens=cached, to_prefill=request.prompt_tokens - cached)
            running.append(seq)
            chunk = min(budget, seq.to_prefill)
            seq.chunk = chunk
            budget -= chunk
            prefill += chunk
            scheduled.append(seq)
        if not scheduled:
            return None
        self._busy = True
        return (now_s + params.step_overhead_s + params.prefill_s_per_token * prefill
                + params.decode_s_per_seq * decode)

    def step_end(self) -> tuple[list[Running], list[Running]]:
        """Apply the finished step: ``(first tokens, finished requests)``; the
        finished ones have released their blocks. Call ``kick`` next."""
        self._busy = False
        first: list[Running] = []
        done: list[Running] = []
        for seq in self._scheduled:
            if seq.to_prefill:
                seq.to_prefill -= seq.chunk
                if seq.to_prefill:
                    continue
                seq.generated = 1
                first.append(seq)
            else:
                seq.generated += 1
            if seq.generated >= seq.request.output_tokens:
                done.append(seq)
        self._scheduled = []
        for seq in done:
            self._running.remove(seq)
            self.cache.release(seq.allocation)
        return first, done
