#!/usr/bin/env python3
"""Write helm/cacheroute/values.schema.json (or, with --check, fail if it is stale).

The `config` property is generated from the pydantic `ServiceConfig`
(serving.deploy.helm_values.chart_config_schema), so the chart rejects exactly what the local
config file rejects (plus inlined API keys); the rest describes the chart's own values.
Every object forbids unknown keys, and image tags must be pinned (never `latest`).

    .venv/bin/python tools/gen_chart_schema.py          # rewrite
    .venv/bin/python tools/gen_chart_schema.py --check  # exit 1 when out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.deploy.helm_values import chart_config_schema

SCHEMA_PATH = ROOT / "helm" / "cacheroute" / "values.schema.json"


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
SECRET_REF = obj({
    "secretName": {"type": "string",
                   "pattern": r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
                   "description": "Name of an existing Secret; empty = not used."},
    "key": {"type": "string", "minLength": 1},
}, ["secretName", "key"])


def values_schema() -> dict:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "cacheroute chart values",
        **obj({
            "config": {**chart_config_schema(),
                       "description": "The service config (serving/config.py ServiceConfig)."},
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
            "autoscaling": obj({
                "enabled": BOOL,
                "maxReplicas": {"type": "integer", "minimum": 1, "maximum": 1024},
                "targetOngoingRequests": {"type": "number", "exclusiveMinimum": 0},
                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
            }, ["enabled", "maxReplicas", "targetOngoingRequests", "idleTimeoutSeconds"]),
            "secrets": obj({"hfToken": SECRET_REF, "apiKeys": SECRET_REF},
                           ["hfToken", "apiKeys"]),
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
        }, ["config", "image"]),
    }


def render() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if SCHEMA_PATH.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA_PATH.relative_to(ROOT)} is stale: run tools/gen_chart_schema.py",
                  file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(SCHEMA_PATH.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
