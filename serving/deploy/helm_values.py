"""Helm values for helm/cacheroute, and the config schema the chart validates them with.

`render_helm_values` holds the same `ServiceConfig` the local file and the RayService
use, so `helm template` renders the same `serveConfigV2`
(tests/unit/serving/deploy/test_helm.py checks that it does).
`chart_config_schema` is the `config` property of helm/cacheroute/values.schema.json
(tools/gen_chart_values.py writes it). Pure data; it imports no Ray.
"""

from __future__ import annotations

from typing import Any

from serving.config import ServiceConfig
from serving.deploy.rayservice import APP_VERSION, DEFAULT_IMAGE_REPOSITORY, SecretRef
from serving.deploy.serve_config import JSON, Autoscaling


def render_helm_values(config: ServiceConfig, *, image_tag: str | None = None,
                       autoscaling: Autoscaling | None = None,
                       hf_token: SecretRef | None = None,
                       api_keys: SecretRef | None = None,
                       cache_claim: str | None = None) -> JSON:
    """Values for `helm install -f` that deploy `config` with helm/cacheroute.

    `cache_claim`: an existing PVC for /cache; None leaves the chart's default (a PVC of
    its own).
    """
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
    if cache_claim:
        values["cache"] = {"persistence": {"enabled": True, "existingClaim": cache_claim}}
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
