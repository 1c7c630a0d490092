#!/usr/bin/env python3
"""Write the chart's values that derive from the service config (or, with --check, exit 1
when a committed copy differs):

    helm/cacheroute/values.yaml         its `config:` block: the shipped default config
                                        (serving/configs/default.yaml, validated), every
                                        field commented with its description's first
                                        sentence and what the chart does with it
    helm/cacheroute/values.schema.json  the whole values schema; its `config` property is
                                        `ServiceConfig`'s (serving.deploy.render.
                                        chart_config_schema)

So the chart's defaults, its schema, the local config file and docs/configuration.md all
come from the config classes and cannot disagree: the chart rejects exactly what the
local file rejects (plus inlined API keys). The rest of values.yaml (image, pods,
monitoring) is written by hand; its schema is below. Every object forbids unknown keys,
and image tags must be pinned (never `latest`). Part of `make generate`.

    .venv/bin/python tools/gen_chart_values.py          # rewrite
    .venv/bin/python tools/gen_chart_values.py --check  # exit 1 when out of date
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.config import ServiceConfig, load_config  # noqa: E402 -- after the path set-up
from serving.deploy.helm_values import chart_config_schema  # noqa: E402

CHART = ROOT / "helm" / "cacheroute"
SCHEMA_PATH = CHART / "values.schema.json"
VALUES_PATH = CHART / "values.yaml"
WIDTH = 90

# What the chart does with a config field, beyond what the field does anywhere: written
# under the field's own description in values.yaml.
CHART_NOTES = {
    "model.source": "In the image: `default` is baked into the CPU image; a hub name needs "
                    "hub access and, for a gated model, secrets.hfToken.",
    "replicas": "One engine per worker pod; the autoscaling floor when autoscaling.enabled.",
    "engine.device": "Also picks worker.cpuResources or worker.gpuResources and the image "
                     "tag suffix.",
    "engine.kv_cache_gib": "Must fit in worker.cpuResources memory with the model and Ray.",
    "engine.cpus_per_replica": "CPU profile: also the worker's Ray num-cpus, rounded up.",
    "engine.gpus_per_replica": "The nvidia.com/gpu each worker pod requests.",
    "server.host": "Ignored in the cluster: Serve binds 0.0.0.0 (serveConfigV2 http_options).",
    "server.port": "Serve HTTP port in every pod (the container port named `serve`).",
    "server.api_keys": "Must stay empty here: keys are never inlined; use secrets.apiKeys.",
    "server.api_keys_env": "Filled from secrets.apiKeys.",
    "server.metrics_token_env": "Set it (e.g. CACHEROUTE_METRICS_TOKEN) with secrets.metricsToken.",
    "server.metrics_port": "Ignored in the cluster: Ray exports metrics on port `metrics` "
                           "of every pod.",
    "server.ready_timeout_s": "Ignored in the cluster (used by the local `cacheroute serve`).",
    "server.ray_num_cpus": "Ignored in the cluster (Ray's CPUs come from the pod resources).",
    "tracing.otlp_endpoint": "In the cluster, set the environment variable with ray.extraEnv.",
    "prefixes.redis_url": "In the cluster, set CACHEROUTE_REDIS_URL with ray.extraEnv (from a "
                          "Secret when the URL holds a password).",
}


def first_sentence(text: str) -> str:
    words = " ".join(text.split())
    end = words.find(". ")
    return words if end < 0 else words[:end + 1]


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ", break_on_hyphens=False)


def _scalar(name: str, value: object, indent: str) -> str:
    text = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False,
                          width=1_000_000).strip()
    return indent + text[1:-1]  # the flow mapping's braces off: `name: value`


def config_block(config: ServiceConfig) -> list[str]:
    """The `config:` block of values.yaml: `config`'s values, each field commented."""
    data = config.model_dump(mode="json")
    lines = ["config:"]

    def fields(model: type[BaseModel], values: dict, prefix: str, indent: str) -> None:
        for name, field in model.model_fields.items():
            path = prefix + name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                intro = " ".join((annotation.__doc__ or "").split())
                where = annotation.__module__.replace(".", "/") + ".py"
                lines.extend(_comment(f"{intro} {annotation.__name__} in {where}.", indent))
                lines.append(f"{indent}{name}:")
                fields(annotation, values[name], f"{path}.", indent + "  ")
                continue
            lines.extend(_comment(first_sentence(field.description or ""), indent))
            if path in CHART_NOTES:
                lines.extend(_comment(CHART_NOTES[path], indent))
            lines.append(_scalar(name, values[name], indent))

    fields(ServiceConfig, data, "", "  ")
    return lines


def render_values(current: str, config: ServiceConfig) -> str:
    """`current` with its `config:` block (up to the next top-level line) replaced."""
    lines = current.splitlines()
    start = lines.index("config:")
    end = next(i for i in range(start + 1, len(lines))
               if lines[i] and not lines[i][0].isspace())
    while lines[end - 1] == "":
        end -= 1
    return "\n".join([*lines[:start], *config_block(config), *lines[end:]]) + "\n"


def obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    out = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


STR = {"type": "string"}
BOOL = {"type": "boolean"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ANY_MAP = {"type": "object"}
DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"},
                      {"type": "number", "minimum": 0}]}
RESOURCES = obj({
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY},
}, description="Kubernetes container resources (requests, limits).")
TOLERATIONS = {"type": "array", "items": {"type": "object"}}
ENV_LIST = {"type": "array", "items": {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}}}}
# A Kubernetes object name, or empty (= not set).
DNS_NAME = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"
SECRET_REF = obj({
    "secretName": {"type": "string",
                   "pattern": DNS_NAME,
                   "description": "Name of an existing Secret; empty = not used."},
    "key": {"type": "string", "minLength": 1},
}, ["secretName", "key"])

# NetworkPolicy `from` entries, passed through as written (Kubernetes validates them).
PEERS = {"type": "array", "items": obj({
    "podSelector": ANY_MAP,
    "namespaceSelector": ANY_MAP,
    "ipBlock": ANY_MAP,
})}


def values_schema() -> dict:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "cacheroute chart values",
        **obj({
            "config": {**chart_config_schema(),
                       "description": "The service config (ServiceConfig, serving/config.py)."},
            "image": obj({
                "repository": {"type": "string", "minLength": 1, "pattern": r"^[^:@\s]+$"},
                "tag": {"type": "string",
                        "description": "Pinned tag; empty = <appVersion>-<device>. Never latest.",
                        "pattern": r"^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$",
                        "not": {"enum": ["latest"]}},
                "pullPolicy": {"enum": ["IfNotPresent", "Always", "Never"]},
            }, ["repository", "tag", "pullPolicy"]),
            "imagePullSecrets": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "nameOverride": STR,
            "fullnameOverride": STR,
            "serviceAccountName": STR,
            "ray": obj({
                "version": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
                "upgradeStrategy": {"enum": ["NewCluster", "None"]},
                "extraEnv": ENV_LIST,
            }, ["version", "upgradeStrategy"]),
            "head": obj({
                "resources": RESOURCES,
                "nodeSelector": STR_MAP,
                "tolerations": TOLERATIONS,
                "affinity": ANY_MAP,
            }),
            "worker": obj({
                "cpuResources": RESOURCES,
                "gpuResources": RESOURCES,
                "nodeSelector": STR_MAP,
                "tolerations": TOLERATIONS,
                "affinity": ANY_MAP,
            }),
            "podLabels": STR_MAP,
            "podAnnotations": STR_MAP,
            "podSecurityContext": ANY_MAP,
            "containerSecurityContext": ANY_MAP,
            "cache": obj({
                "persistence": obj({
                    "enabled": BOOL,
                    "existingClaim": {"type": "string", "pattern": DNS_NAME,
                                      "description": "Existing PVC; empty = the chart's."},
                    "size": {"type": "string",
                             "pattern": r"^[0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti|P|Pi)?$"},
                    "storageClassName": {"type": "string", "pattern": DNS_NAME,
                                         "description": "Empty = the default class."},
                }, ["enabled", "existingClaim", "size", "storageClassName"]),
            }, ["persistence"]),
            "autoscaling": obj({
                "enabled": BOOL,
                "maxReplicas": {"type": "integer", "minimum": 1, "maximum": 1024},
                "targetOngoingRequests": {"type": "number", "exclusiveMinimum": 0},
                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
            }, ["enabled", "maxReplicas", "targetOngoingRequests", "idleTimeoutSeconds"]),
            "secrets": obj({"hfToken": SECRET_REF, "apiKeys": SECRET_REF,
                            "metricsToken": SECRET_REF},
                           ["hfToken", "apiKeys", "metricsToken"]),
            "service": obj({
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "annotations": STR_MAP,
            }, ["type", "port"]),
            "metrics": obj({
                "podMonitor": obj({"enabled": BOOL, "interval": DURATION, "labels": STR_MAP},
                                  ["enabled"]),
                "serviceMonitor": obj({"enabled": BOOL, "interval": DURATION, "labels": STR_MAP},
                                      ["enabled"]),
            }),
            "prometheusRule": obj({
                "enabled": BOOL,
                "labels": STR_MAP,
                "replicaDownFor": DURATION,
                "minPrefixCacheHitRate": {"type": "number", "minimum": 0, "maximum": 1},
                "maxTtftP99Seconds": {"type": "number", "exclusiveMinimum": 0},
                "maxKvCacheUsage": {"type": "number", "minimum": 0, "maximum": 1},
                "maxSpillRatio": {"type": "number", "minimum": 0, "maximum": 1},
                "minPredictionDeliveredRatio": {"type": "number", "minimum": 0, "maximum": 1},
                "minPredictedCachedTokensRate": {"type": "number", "minimum": 0},
            }, ["enabled"]),
            "dashboards": obj({
                "enabled": BOOL,
                "label": {"type": "string", "minLength": 1},
                "labelValue": STR,
                "folder": STR,
            }, ["enabled", "label"]),
            "podDisruptionBudget": obj({
                "enabled": BOOL,
                "maxUnavailable": {"anyOf": [{"type": "integer", "minimum": 0},
                                             {"type": "string", "pattern": r"^[0-9]+%$"}]},
            }, ["enabled"]),
            "networkPolicy": obj({
                "enabled": BOOL,
                "apiFrom": PEERS,
                "metricsFrom": PEERS,
                "operatorFrom": PEERS,
            }, ["enabled"]),
        }, ["config", "image"]),
    }


def render_schema() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    files = {SCHEMA_PATH: render_schema(),
             VALUES_PATH: render_values(VALUES_PATH.read_text(encoding="utf-8"), load_config())}
    stale = [p for p, text in files.items() if p.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run `make generate`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
