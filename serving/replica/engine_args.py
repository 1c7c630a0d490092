"""The vLLM engine of a replica, as arguments: its environment and its engine kwargs.

Built from the `engine` section (and tracing) of the service config. The Serve
application (serving/app.py) passes them to `ray.serve.llm`; the live benchmark's
peer routers (bench/peers.py) start plain vLLM servers with the same values, so both
measure the same engines. Kept free of Ray and vLLM imports for that second use.
"""

from __future__ import annotations

from typing import Any

from serving.config import ServiceConfig


def engine_env(config: ServiceConfig) -> dict[str, str]:
    """Environment of every replica (and so of its vLLM engine process)."""
    env = {
        # vLLM seeds prefix-cache block hashes with PYTHONHASHSEED; the router
        # recomputes them, so engines must not pick a random seed per process.
        "PYTHONHASHSEED": str(config.engine.hash_seed),
        "RAY_USAGE_STATS_ENABLED": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # vLLM's request validation refuses `n` above this (sampling_params.py).
        "VLLM_MAX_N_SEQUENCES": str(config.engine.max_n),
    }
    if config.engine.device == "cpu":
        # KV cache size of a CPU engine, in GiB.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.engine.kv_cache_gib)
    if _engine_tracing(config):
        # vLLM's exporter speaks gRPC unless told otherwise; the endpoint is OTLP/HTTP.
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
        env["OTEL_SERVICE_NAME"] = config.tracing.service_name
    return env


def _engine_tracing(config: ServiceConfig) -> bool:
    """vLLM's own `llm_request` spans: on with tracing and an explicit endpoint (vLLM
    has no default endpoint)."""
    return config.tracing.enabled and config.tracing.otlp_endpoint is not None


def engine_kwargs(config: ServiceConfig, model_path: str) -> dict[str, Any]:
    eng = config.engine
    kwargs: dict[str, Any] = {
        "enable_prefix_caching": eng.enable_prefix_caching,
        # sha256_cbor is vLLM's reproducible block hash: the router computes the same
        # values without the engine (router/hashing.py).
        "prefix_caching_hash_algo": "sha256_cbor",
        "block_size": eng.block_size,
        "max_model_len": eng.max_model_len,
        "max_num_seqs": eng.max_num_seqs,
        "dtype": eng.dtype,
        # OpenAI's `usage.prompt_tokens_details.cached_tokens` on every response.
        "enable_prompt_tokens_details": True,
    }
    if eng.device == "gpu":
        kwargs["gpu_memory_utilization"] = eng.gpu_memory_utilization
        kwargs["tensor_parallel_size"] = eng.gpus_per_replica
    if config.model.tokenizer:
        kwargs["tokenizer"] = config.model.tokenizer
    if _engine_tracing(config):
        # The engine parents its span on the `traceparent` the replica passes it.
        kwargs["otlp_traces_endpoint"] = config.tracing.otlp_endpoint
    kwargs.update(eng.extra_engine_kwargs)
    return kwargs
