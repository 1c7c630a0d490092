"""A KubeRay `RayService` (ray.io/v1) serving the config: head group, engine worker group.

A head group that runs no replicas, one worker group of engine pods (a GPU or CPU
profile from `engine.device`), readiness on the service's `/ready`, non-root pods
with a read-only root filesystem. This module mirrors the chart's templates
(helm/cacheroute/templates/rayservice.yaml); change both together
(tests/unit/serving/deploy/test_helm.py checks that they render the same spec).
Pure data; it imports no Ray.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.config import ConfigError, ServiceConfig
from serving.deploy.serve_config import (
    JSON,
    Autoscaling,
    render_serve_config,
    serve_config_text,
)

# Pinned versions: the chart's appVersion, the image tag prefix and the Ray in the image.
APP_VERSION = "0.1.0"
RAY_VERSION = "2.60.0"
DEFAULT_IMAGE_REPOSITORY = "ghcr.io/cacheroute/cacheroute"

# Ports inside every Ray pod (KubeRay's defaults, named the way KubeRay names them).
METRICS_PORT = 8080          # Ray's Prometheus export: engine + Serve metrics
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365  # serves /api/local_raylet_healthz
GCS_PORT = 6379
CLIENT_PORT = 10001

# Default pod resources; the chart's values.yaml holds the same (a test compares them).
HEAD_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "1", "memory": "4Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
}
WORKER_CPU_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "2", "memory": "6Gi"},
    "limits": {"cpu": "4", "memory": "6Gi"},
}
WORKER_GPU_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "8", "memory": "48Gi"},
    "limits": {"cpu": "16", "memory": "48Gi"},
}

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

# Writable places when the root filesystem is read-only: Ray's session dir (/tmp/ray),
# the hub/vLLM/Triton caches, and shared memory for the engine and the object store.
# /cache is an emptyDir unless a PersistentVolumeClaim is given (`cache_claim`; the
# chart's default): only a claim outlives the pod, so a new pod loads the compile cache
# (VLLM_CACHE_ROOT/torch_compile_cache) and the model instead of rebuilding them.
CACHE_DIR = "/cache"
CACHE_ENV = [
    {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
    {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
    {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_DIR}/vllm"},
    {"name": "VLLM_CONFIG_ROOT", "value": f"{CACHE_DIR}/vllm-config"},
    {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
]
VOLUME_MOUNTS = [
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "cache", "mountPath": CACHE_DIR},
    {"name": "dshm", "mountPath": "/dev/shm"},
]
VOLUMES = [
    {"name": "tmp", "emptyDir": {}},
    {"name": "cache", "emptyDir": {}},
    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
]


def volumes(cache_claim: str | None = None) -> list[JSON]:
    """The pod volumes: `VOLUMES`, with /cache on `cache_claim` when one is given."""
    claim = {"name": "cache", "persistentVolumeClaim": {"claimName": cache_claim}}
    return [claim if cache_claim and v["name"] == "cache" else v
            for v in copy.deepcopy(VOLUMES)]


HF_TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class SecretRef:
    """An existing Kubernetes Secret and the key holding the value (never inlined)."""

    name: str
    key: str


def default_image(config: ServiceConfig) -> str:
    return f"{DEFAULT_IMAGE_REPOSITORY}:{APP_VERSION}-{config.engine.device}"


def worker_resources(config: ServiceConfig, base: JSON | None = None) -> JSON:
    """Resources of one engine pod: the device profile plus `nvidia.com/gpu` on GPUs."""
    eng = config.engine
    if base is None:
        base = WORKER_GPU_RESOURCES if eng.device == "gpu" else WORKER_CPU_RESOURCES
    res = copy.deepcopy(base)
    if eng.device == "gpu":
        gpus = str(eng.gpus_per_replica)
        res.setdefault("requests", {})["nvidia.com/gpu"] = gpus
        res.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    return res


def worker_ray_start_params(config: ServiceConfig) -> dict[str, str]:
    params = {"metrics-export-port": str(METRICS_PORT)}
    eng = config.engine
    if eng.device == "gpu":
        params["num-gpus"] = str(eng.gpus_per_replica)
    else:
        # One engine per pod: Ray's logical CPUs gate placement of CPU replicas.
        params["num-cpus"] = str(max(1, math.ceil(eng.cpus_per_replica)))
    return params


def _env(config: ServiceConfig, hf_token: SecretRef | None, api_keys: SecretRef | None,
         extra_env: Sequence[JSON] = ()) -> list[JSON]:
    env: list[JSON] = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
                       {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
                       *CACHE_ENV]
    if hf_token is not None:
        env.append({"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": hf_token.name, "key": hf_token.key}}})
    if api_keys is not None:
        if not config.server.api_keys_env:
            raise ConfigError("api keys secret given but server.api_keys_env is null")
        env.append({"name": config.server.api_keys_env, "valueFrom": {"secretKeyRef": {
            "name": api_keys.name, "key": api_keys.key}}})
    env.extend(copy.deepcopy(list(extra_env)))
    return env


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "cacheroute", "app.kubernetes.io/instance": name}


def render_rayservice(
    config: ServiceConfig,
    *,
    name: str = "cacheroute",
    image: str | None = None,
    autoscaling: Autoscaling | None = None,
    hf_token: SecretRef | None = None,
    api_keys: SecretRef | None = None,
    head_resources: JSON | None = None,
    worker_resources_base: JSON | None = None,
    node_selector: JSON | None = None,
    tolerations: Sequence[JSON] = (),
    extra_env: Sequence[JSON] = (),
    upgrade_strategy: str = "NewCluster",
    labels: JSON | None = None,
    cache_claim: str | None = None,
) -> JSON:
    """A KubeRay `RayService` (ray.io/v1) serving `config`.

    Head: GCS, dashboard, Serve controller and a proxy; `num-cpus: 0` keeps engine and
    ingress replicas off it. Worker group `engines`: one engine replica per pod,
    `config.replicas` pods (or the autoscaling bounds), readiness = the service's
    `/ready` (every replica warm). Both run non-root with a read-only root filesystem.
    `cache_claim`: an existing PersistentVolumeClaim (ReadWriteMany, as every pod mounts
    it) for /cache; None = an emptyDir, which a new pod starts empty.
    """
    image = image or default_image(config)
    if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        raise ConfigError(f"image {image!r}: pin a tag or digest")
    if image.endswith(":latest"):
        raise ConfigError(f"image {image!r}: 'latest' is not a pinned tag")
    if autoscaling is not None:
        autoscaling.check(config)
    port = config.server.port
    sel = selector_labels(name)
    env = _env(config, hf_token, api_keys, extra_env)

    def container(role: str, resources: JSON, ports: list[JSON], liveness: JSON,
                  readiness: JSON) -> JSON:
        return {
            "name": f"ray-{role}",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": ports,
            "env": copy.deepcopy(env),
            "resources": copy.deepcopy(resources),
            "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
            "livenessProbe": liveness,
            "readinessProbe": readiness,
            "volumeMounts": copy.deepcopy(VOLUME_MOUNTS),
        }

    def pod(component: str, cont: JSON, scheduling: bool) -> JSON:
        spec: dict[str, Any] = {"securityContext": copy.deepcopy(POD_SECURITY_CONTEXT)}
        if scheduling and node_selector:
            spec["nodeSelector"] = dict(node_selector)
        if scheduling and tolerations:
            spec["tolerations"] = copy.deepcopy(list(tolerations))
        spec["containers"] = [cont]
        spec["volumes"] = volumes(cache_claim)
        return {"metadata": {"labels": {**sel, "app.kubernetes.io/component": component}},
                "spec": spec}

    raylet_probe = {
        "httpGet": {"path": "/api/local_raylet_healthz", "port": DASHBOARD_AGENT_PORT},
        "initialDelaySeconds": 30, "periodSeconds": 10, "timeoutSeconds": 5,
        "failureThreshold": 12,
    }
    head_ready = {
        "httpGet": {"path": "/api/gcs_healthz", "port": DASHBOARD_PORT},
        "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 5,
        "failureThreshold": 6,
    }
    # 200 only when every configured engine replica has served a warm-up generation.
    worker_ready = {
        "httpGet": {"path": "/ready", "port": "serve"},
        "initialDelaySeconds": 30, "periodSeconds": 10, "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    head = container("head", head_resources or HEAD_RESOURCES, [
        {"name": "gcs-server", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": CLIENT_PORT},
        {"name": "serve", "containerPort": port},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ], copy.deepcopy(raylet_probe), head_ready)
    worker = container("worker", worker_resources(config, worker_resources_base), [
        {"name": "serve", "containerPort": port},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ], copy.deepcopy(raylet_probe), worker_ready)

    min_pods = config.replicas
    max_pods = autoscaling.max_replicas if autoscaling else config.replicas
    cluster: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscaling is not None,
    }
    if autoscaling is not None:
        cluster["autoscalerOptions"] = {"upscalingMode": "Default",
                                        "idleTimeoutSeconds": autoscaling.idle_timeout_s}
    cluster["headGroupSpec"] = {
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0",
                           "metrics-export-port": str(METRICS_PORT)},
        "template": pod("head", head, scheduling=False),
    }
    cluster["workerGroupSpecs"] = [{
        "groupName": "engines",
        "replicas": min_pods,
        "minReplicas": min_pods,
        "maxReplicas": max_pods,
        "rayStartParams": worker_ray_start_params(config),
        "template": pod("engine", worker, scheduling=True),
    }]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {**sel, **(labels or {})}},
        "spec": {
            "upgradeStrategy": {"type": upgrade_strategy},
            "serveConfigV2": serve_config_text(render_serve_config(config, autoscaling=autoscaling)),
            "rayClusterConfig": cluster,
        },
    }
