"""Kubernetes artefacts from the service config: one source of truth for local and cluster.

    python -m serving.deploy.render --config my.yaml --out deploy/   # (wired as `cacheroute render`)

writes three files from one validated `ServiceConfig`:

* `serve-config.yaml` -- the Ray Serve config (`serveConfigV2` of a KubeRay
  `RayService`, or `serve deploy` input): the `cacheroute` application, built by
  `serving.app:app_builder` from `args.config`, the very same schema as the local file.
* `rayservice.yaml` -- a complete KubeRay `RayService` (ray.io/v1): a head group that
  runs no replicas, one worker group of engine pods (a GPU or CPU profile from
  `engine.device`), readiness on the service's `/ready`, non-root pods.
* `values.yaml` -- Helm values for `helm/cacheroute` holding the same config, so
  `helm template` renders the same `serveConfigV2` (tests/unit/serving/deploy/test_helm.py
  checks that it does, and that the whole RayService spec matches `render_rayservice`).

This module mirrors the chart's templates (helm/cacheroute/templates/rayservice.yaml);
change both together. It imports no Ray or vLLM, so it is cheap to run anywhere.
Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

import yaml

from serving.config import ConfigError, ServiceConfig, load_config

# The Serve application (serving/app.py: APP_NAME, app_builder). Kept literal here so
# rendering never imports Ray; tests compare them with serving.app.
APP_NAME = "cacheroute"
IMPORT_PATH = "serving.app:app_builder"
ROUTE_PREFIX = "/"

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

HF_TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class Autoscaling:
    """Serve autoscaling of the engine deployment, floor = `config.replicas`.

    The floor is the config's `replicas` because `/ready` waits for that many warm
    replicas; the worker group scales between the same bounds (one engine per pod).
    """

    max_replicas: int
    target_ongoing_requests: float = 8.0
    idle_timeout_s: int = 300

    def check(self, config: ServiceConfig) -> None:
        if self.max_replicas < config.replicas:
            raise ConfigError(f"autoscaling: max_replicas ({self.max_replicas}) is below "
                              f"replicas ({config.replicas})")
        if self.target_ongoing_requests <= 0:
            raise ConfigError("autoscaling: target_ongoing_requests must be > 0")
        if self.idle_timeout_s < 0:
            raise ConfigError("autoscaling: idle_timeout_s must be >= 0")


@dataclass(frozen=True)
class SecretRef:
    """An existing Kubernetes Secret and the key holding the value (never inlined)."""

    name: str
    key: str


def llm_deployment_name(config: ServiceConfig) -> str:
    return config.llm_deployment_name()


def default_image(config: ServiceConfig) -> str:
    return f"{DEFAULT_IMAGE_REPOSITORY}:{APP_VERSION}-{config.engine.device}"


def render_serve_config(config: ServiceConfig, *, autoscaling: Autoscaling | None = None) -> JSON:
    """The Serve config document (KubeRay's `serveConfigV2`)."""
    app: dict[str, Any] = {
        "name": APP_NAME,
        "route_prefix": ROUTE_PREFIX,
        "import_path": IMPORT_PATH,
        "args": {"config": config.model_dump(mode="json")},
    }
    if autoscaling is not None:
        autoscaling.check(config)
        # A Serve config override of the deployment that app_builder builds with a
        # fixed num_replicas: "auto" switches it to the autoscaler with these bounds.
        app["deployments"] = [{
            "name": llm_deployment_name(config),
            "num_replicas": "auto",
            "autoscaling_config": {
                "min_replicas": config.replicas,
                "max_replicas": autoscaling.max_replicas,
                "target_ongoing_requests": autoscaling.target_ongoing_requests,
            },
        }]
    return {
        "http_options": {"host": "0.0.0.0", "port": config.server.port},
        "applications": [app],
    }


def serve_config_text(serve_config: JSON) -> str:
    text: str = yaml.safe_dump(serve_config, sort_keys=False, default_flow_style=False)
    return text


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
) -> JSON:
    """A KubeRay `RayService` (ray.io/v1) serving `config`.

    Head: GCS, dashboard, Serve controller and a proxy; `num-cpus: 0` keeps engine and
    ingress replicas off it. Worker group `engines`: one engine replica per pod,
    `config.replicas` pods (or the autoscaling bounds), readiness = the service's
    `/ready` (every replica warm). Both run non-root with a read-only root filesystem.
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
        spec["volumes"] = copy.deepcopy(VOLUMES)
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


def render_helm_values(config: ServiceConfig, *, image_tag: str | None = None,
                       autoscaling: Autoscaling | None = None,
                       hf_token: SecretRef | None = None,
                       api_keys: SecretRef | None = None) -> JSON:
    """Values for `helm install -f` that deploy `config` with helm/cacheroute."""
    values: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "image": {"repository": DEFAULT_IMAGE_REPOSITORY,
                  "tag": image_tag or f"{APP_VERSION}-{config.engine.device}"},
    }
    if autoscaling is not None:
        autoscaling.check(config)
        values["autoscaling"] = {"enabled": True, "maxReplicas": autoscaling.max_replicas,
                                 "targetOngoingRequests": autoscaling.target_ongoing_requests,
                                 "idleTimeoutSeconds": autoscaling.idle_timeout_s}
    if hf_token is not None or api_keys is not None:
        values["secrets"] = {}
        if hf_token is not None:
            values["secrets"]["hfToken"] = {"secretName": hf_token.name, "key": hf_token.key}
        if api_keys is not None:
            values["secrets"]["apiKeys"] = {"secretName": api_keys.name, "key": api_keys.key}
    return values


def config_json_schema() -> JSON:
    """JSON schema of `ServiceConfig` with every `$ref` inlined: the `config` property of
    helm/cacheroute/values.schema.json (Helm's validator does not follow `$defs`)."""
    schema = ServiceConfig.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = defs[node["$ref"].rsplit("/", 1)[-1]]
                merged = {**inline(target), **{k: inline(v) for k, v in node.items() if k != "$ref"}}
                return merged
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    inlined: JSON = inline(schema)
    return inlined


def chart_config_schema() -> JSON:
    """`config_json_schema` as the chart enforces it: API keys are never inlined in
    values (they come from secrets.apiKeys), so `server.api_keys` must stay empty."""
    schema = config_json_schema()
    keys = schema["properties"]["server"]["properties"]["api_keys"]
    keys["maxItems"] = 0
    keys["description"] = ("Must stay empty in the chart: API keys are never inlined; "
                           "set secrets.apiKeys to an existing Secret.")
    return schema


def _secret_arg(text: str | None, what: str) -> SecretRef | None:
    if not text:
        return None
    name, sep, key = text.partition(":")
    if not name or (sep and not key):
        raise ConfigError(f"--{what}: expected SECRET or SECRET:KEY, got {text!r}")
    return SecretRef(name, key or ("HF_TOKEN" if what == "hf-token-secret" else "api-keys"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `cacheroute render` (serving/cli.py adds them to its subcommand)."""
    p.add_argument("--config", help="YAML config (default: the shipped default)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--name", default="cacheroute", help="RayService name (default: cacheroute)")
    p.add_argument("--image", help="image with a pinned tag (default: "
                   f"{DEFAULT_IMAGE_REPOSITORY}:{APP_VERSION}-<engine.device>)")
    p.add_argument("--max-replicas", type=int,
                   help="enable autoscaling between `replicas` and this many replicas")
    p.add_argument("--target-ongoing-requests", type=float, default=8.0,
                   help="autoscaling target per replica (default 8)")
    p.add_argument("--hf-token-secret", metavar="SECRET[:KEY]",
                   help="existing Secret holding HF_TOKEN (key default HF_TOKEN)")
    p.add_argument("--api-keys-secret", metavar="SECRET[:KEY]",
                   help="existing Secret holding the comma-separated API keys "
                        "(key default api-keys)")


def run(args: argparse.Namespace) -> int:
    """Render and write the three files; raises ConfigError on bad input."""
    config = load_config(args.config)
    autoscaling = None
    if args.max_replicas is not None:
        autoscaling = Autoscaling(args.max_replicas, args.target_ongoing_requests)
    hf = _secret_arg(args.hf_token_secret, "hf-token-secret")
    keys = _secret_arg(args.api_keys_secret, "api-keys-secret")
    image = args.image or default_image(config)
    serve_cfg = render_serve_config(config, autoscaling=autoscaling)
    rayservice = render_rayservice(config, name=args.name, image=image,
                                   autoscaling=autoscaling, hf_token=hf, api_keys=keys)
    repo, _, tag = image.rpartition(":")
    values = render_helm_values(config, image_tag=tag, autoscaling=autoscaling,
                                hf_token=hf, api_keys=keys)
    values["image"]["repository"] = repo
    files = {
        "serve-config.yaml": serve_config_text(serve_cfg),
        "rayservice.yaml": yaml.safe_dump(rayservice, sort_keys=False),
        "values.yaml": "# helm install cacheroute helm/cacheroute -f values.yaml\n"
                       + yaml.safe_dump(values, sort_keys=False),
    }
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            (out / fname).write_text(text, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot write {out}: {err.strerror or err}") from None
    for fname in files:
        print(out / fname)
    return 0


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(message)  # one line and exit 2, like every other error


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="cacheroute render",
                     description="Render serve-config.yaml, rayservice.yaml and Helm "
                                 "values.yaml from a config file.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except _ArgError as err:
        print(f"cacheroute render: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"cacheroute render: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
