"""The Ray Serve application is built from the config: engine, routing, environment."""

from __future__ import annotations

import pytest

from serving.app import (
    build_llm_config,
    engine_env,
    engine_kwargs,
    llm_deployment_name,
    ROUTING_STATS_PERIOD_S,
    request_router_config,
)
from serving.config import ServiceConfig, validate_config


def make_config(**overrides) -> ServiceConfig:
    return validate_config(overrides)


def test_cpu_engine_gets_prefix_caching_reproducible_hashes_and_cached_tokens() -> None:
    kwargs = engine_kwargs(make_config(engine={"block_size": 16, "max_model_len": 2048}), "/m")
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["prefix_caching_hash_algo"] == "sha256_cbor"
    assert kwargs["enable_prompt_tokens_details"] is True
    assert (kwargs["block_size"], kwargs["max_model_len"]) == (16, 2048)
    assert "gpu_memory_utilization" not in kwargs


def test_gpu_engine_from_the_same_schema() -> None:
    config = make_config(engine={"device": "gpu", "gpus_per_replica": 2,
                                 "gpu_memory_utilization": 0.8})
    kwargs = engine_kwargs(config, "org/model")
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["gpu_memory_utilization"] == 0.8
    llm = build_llm_config(config, "org/model")
    assert llm.accelerator_config is None or llm.accelerator_config.kind != "cpu"
    assert "VLLM_CPU_KVCACHE_SPACE" not in engine_env(config)


def test_extra_engine_kwargs_pass_through_last() -> None:
    kwargs = engine_kwargs(make_config(engine={"extra_engine_kwargs": {"max_num_seqs": 3,
                                                                       "seed": 7}}), "/m")
    assert kwargs["max_num_seqs"] == 3 and kwargs["seed"] == 7


def test_engines_share_the_configured_hash_seed() -> None:
    env = engine_env(make_config(engine={"hash_seed": 1234, "kv_cache_gib": 2}))
    assert env["PYTHONHASHSEED"] == "1234"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_max_n_reaches_vllms_request_validation() -> None:
    from vllm import envs

    assert engine_env(make_config())["VLLM_MAX_N_SEQUENCES"] == "128"
    env = engine_env(make_config(engine={"max_n": 4}))
    assert env["VLLM_MAX_N_SEQUENCES"] == "4"
    # The variable vLLM reads: a rename upstream would silently restore its 16,384.
    assert "VLLM_MAX_N_SEQUENCES" in envs.environment_variables


@pytest.mark.parametrize(("policy", "upstream"), [
    ("pow2", "ray.serve._private.request_router.pow_2_router:PowerOfTwoChoicesRequestRouter"),
    ("ray-prefix", "ray.serve.llm.request_router:PrefixCacheAffinityRouter"),
    ("cacheroute", "ray.serve.request_router:RequestRouter"),
    ("random", "ray.serve.request_router:RequestRouter"),
])
def test_policy_selects_the_request_router(policy: str, upstream: str) -> None:
    import importlib

    def load(path: str) -> type:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    config = make_config(routing={"policy": policy})
    rr = request_router_config(config, "/m")
    # The comparison policies are the upstream classes (telemetry added, routing not).
    assert issubclass(load(rr["request_router_class"]), load(upstream))
    assert rr["request_routing_stats_period_s"] == ROUTING_STATS_PERIOD_S
    llm = build_llm_config(config, "/m")
    assert llm.deployment_config["request_router_config"]["request_router_class"] == (
        rr["request_router_class"])


def test_llm_config_for_cpu_replicas() -> None:
    config = make_config(replicas=3, model={"id": "org/m.v1"})
    llm = build_llm_config(config, "/models/m")
    assert llm.model_id == "org/m.v1"
    assert llm.deployment_config["num_replicas"] == 3
    assert llm.accelerator_config.kind == "cpu"
    assert llm.runtime_env["env_vars"]["PYTHONHASHSEED"] == "0"
    assert llm_deployment_name(config) == "LLMServer:org--m_v1"


def test_a_leaving_replica_drains_for_the_configured_time() -> None:
    default = build_llm_config(make_config(), "/m").deployment_config
    assert default["graceful_shutdown_timeout_s"] == 120.0
    config = make_config(failover={"drain_timeout_s": 300})
    assert build_llm_config(config, "/m").deployment_config[
        "graceful_shutdown_timeout_s"] == 300


def test_failover_config_is_validated() -> None:
    from serving.config import ConfigError

    with pytest.raises(ConfigError, match="backoff_s"):
        make_config(failover={"backoff_s": 5, "max_backoff_s": 1})
    with pytest.raises(ConfigError, match="max_attempts"):
        make_config(failover={"max_attempts": 0})
