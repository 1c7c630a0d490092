"""The Ray Serve application: `ray.serve.llm` replicas behind an OpenAI-compatible ingress.

    client ──HTTP──▶ Serve proxy ──▶ CacheRouteIngress (FastAPI, auth, /ready)
                                        │ DeploymentHandle, request router = policy
                                        ▼
                           CacheRouteServer × N  (ray.serve.llm LLMServer)
                                        │
                                  vLLM engine (prefix caching, KV events)

Built from `ray.serve.llm`'s public pieces (`LLMConfig`, `build_llm_deployment`,
`OpenAiIngress`, `make_fastapi_ingress`) -- the same wiring as `build_openai_app` --
because we need two hooks that builder does not expose: our own FastAPI app (auth,
readiness, error shaping) and a server subclass that warms its engine before Serve
reports it running.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.llm import LLMConfig, build_llm_deployment

from serving.config import ServiceConfig
from serving.replica.engine_args import engine_env, engine_kwargs
from serving.ingress.ingress import CacheRouteIngress, make_ingress_deployment
from serving.replica.server import CacheRouteServer

INGRESS_DEPLOYMENT = "CacheRouteIngress"
APP_NAME = "cacheroute"

# Request routers by policy name. `pow2` (Serve's default) and `ray-prefix`
# (ray.serve.llm's PrefixCacheAffinityRouter) are the upstream classes plus
# telemetry; `cacheroute` is this project's router (router/ core + serving adapter);
# `random` is the baseline (a uniformly random order of replicas).
_ROUTER_CLASSES: dict[str, str] = {
    "pow2": "serving.routing.baselines:Pow2Router",
    "ray-prefix": "serving.routing.baselines:RayPrefixRouter",
    "cacheroute": "serving.routing.cacheroute:CacheRouteRequestRouter",
    "random": "serving.routing.baselines:RandomRouter",
}

# How often Serve pulls each replica's routing stats (KV-event endpoint, engine
# telemetry) and broadcasts them to routers: the staleness of per-replica series on
# /metrics. Serve's default of 10 s hides short load spikes from dashboards.
ROUTING_STATS_PERIOD_S = 2.0


def llm_deployment_name(config: ServiceConfig) -> str:
    return config.llm_deployment_name()


def request_router_config(config: ServiceConfig, model_path: str) -> dict[str, Any]:
    rr: dict[str, Any] = {
        "request_router_class": _ROUTER_CLASSES[config.routing.policy],
        "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S,
    }
    if config.routing.policy == "cacheroute":
        rr["request_router_kwargs"] = {
            "config_json": config.model_dump_json(),
            # The router tokenises with the engine's own tokenizer (prefix key exactness).
            "tokenizer_path": config.model.tokenizer or model_path,
        }
    return rr


def build_llm_config(config: ServiceConfig, model_path: str) -> LLMConfig:
    deployment_config: dict[str, Any] = {
        "num_replicas": config.replicas,
        "ray_actor_options": {"num_cpus": config.engine.cpus_per_replica},
        # A CPU engine prefills a 4k prompt in seconds; Serve's 5 pending requests per
        # replica would make the router fall back to random choice under modest load.
        "max_ongoing_requests": max(8, config.engine.max_num_seqs * 2),
        # A leaving replica (scale-down) first leaves every router's ring, then gets
        # this long to finish its in-flight generations (docs/operations/failover.md).
        "graceful_shutdown_timeout_s": config.failover.drain_timeout_s,
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,
    }
    deployment_config["request_router_config"] = request_router_config(config, model_path)
    llm: dict[str, Any] = {
        "model_loading_config": {"model_id": config.model.id, "model_source": model_path},
        "engine_kwargs": engine_kwargs(config, model_path),
        "deployment_config": deployment_config,
        "runtime_env": {"env_vars": engine_env(config)},
        "log_engine_metrics": True,
        # Read by CacheRouteServer: publish KV events for the router's ownership index,
        # and the settings of its `llm.generate` spans (None: tracing off).
        "experimental_configs": {
            "cacheroute_kv_events": config.routing.policy == "cacheroute",
            "cacheroute_tracing": (config.tracing.model_dump() if config.tracing.enabled
                                   else None),
        },
    }
    if config.engine.device == "cpu":
        # Without this a CPU-only cluster waits forever for {"GPU": 1}.
        llm["accelerator_config"] = {"kind": "cpu"}
    return LLMConfig(**llm)


def build_app(config: ServiceConfig, model_path: str) -> serve.Application:
    """The whole application for one model; `model_path` is the resolved source."""
    llm_config = build_llm_config(config, model_path)
    server = build_llm_deployment(
        llm_config,
        deployment_cls=CacheRouteServer,
        name_prefix="LLMServer:",
    )
    return make_ingress_deployment(
        config=config,
        llm_config=llm_config,
        server=server,
        ingress_cls=CacheRouteIngress,
        llm_deployment_name=llm_deployment_name(config),
        app_name=APP_NAME,
        name=INGRESS_DEPLOYMENT,
    )


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for Serve config files and KubeRay's `serveConfigV2`:

        applications:
          - name: cacheroute
            import_path: serving.app:app_builder
            args: {config: {...the same schema as the YAML file...}}

    The model source is resolved where the replicas run (a hub name is passed to
    vLLM; `default` builds the embedded model on that node).
    """
    from serving.config import validate_config
    from serving.models.source import resolve_model_source

    config = validate_config(args.get("config", {}), origin="serveConfigV2 args.config")
    return build_app(config, resolve_model_source(config))
