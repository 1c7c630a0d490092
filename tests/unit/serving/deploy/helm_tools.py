"""Running the deploy tools for tests: helm, kubectl and kubernetes-validate, offline.

Needs the static `helm` and `kubectl` binaries (tools/fetch-helm.sh puts them in
.cache/tools/) and `kubernetes-validate` in this Python environment; `need` skips a
test that lacks one, with the reason, except in CI (CACHEROUTE_REQUIRE_DEPLOY_TOOLS=1),
where a missing tool is a failure. Each value set of the chart is rendered once per
session (`template_text` is cached). No cluster is contacted.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.config import validate_config
from serving.deploy.rayservice import SecretRef
from serving.deploy.serve_config import Autoscaling

ROOT = Path(__file__).resolve().parents[4]
CHART = ROOT / "helm" / "cacheroute"
K8S = ROOT / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RELEASE = "cacheroute"
VALUE_SETS = ("default", "cpu", "gpu", "autoscaling", "api-keys")
CRD_KINDS = {"RayService", "PodMonitor", "ServiceMonitor", "PrometheusRule"}
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
FETCH_HINT = "run tools/fetch-helm.sh (CI does)"
# Set to 1 by .ci/run: a missing tool is then a failure, not a skip.
REQUIRE_TOOLS_ENV = "CACHEROUTE_REQUIRE_DEPLOY_TOOLS"


def binary(name: str) -> str | None:
    for candidate in (ROOT / ".cache" / "tools" / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).resolve().exists():
            return str(candidate)
    return None


def run_tool(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def need(name: str, hint: str = FETCH_HINT) -> str:
    path = binary(name)
    if path is None:
        message = f"`{name}` not installed: {hint}"
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":  # CI installs them: never skip there
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def helm_env() -> dict:
    home = Path(os.environ.get("PYTEST_HELM_HOME", "/tmp")) / f"cacheroute-helm-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HELM_CACHE_HOME": str(home), "HELM_CONFIG_HOME": str(home),
            "HELM_DATA_HOME": str(home), "KUBECONFIG": os.devnull}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = run_tool([need("helm"), *args], env=helm_env(), timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stderr}")
    return out


def values_file(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


@functools.cache
def template_text(value_set: str, chart: str = str(CHART)) -> str:
    return helm("template", RELEASE, chart, "-f", str(values_file(value_set))).stdout


def yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def chart_objects(value_set: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml_docs(template_text(value_set))}


def chart_rayservice(value_set: str) -> dict:
    [rs] = [d for d in yaml_docs(template_text(value_set)) if d["kind"] == "RayService"]
    return rs


@functools.cache
def merged_values(value_set: str) -> dict:
    def merge(base: dict, over: dict) -> dict:
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(base, yaml.safe_load(values_file(value_set).read_text()) or {})


def render_args(value_set: str) -> dict:
    """render_rayservice's arguments for what a value set sets."""
    v = merged_values(value_set)
    config = validate_config(v["config"])
    a = v["autoscaling"]
    secrets = v["secrets"]
    tag = v["image"]["tag"] or f"0.1.0-{config.engine.device}"
    return {
        "config": config,
        "name": RELEASE,
        "image": f"{v['image']['repository']}:{tag}",
        "autoscaling": Autoscaling(a["maxReplicas"], a["targetOngoingRequests"],
                                   a["idleTimeoutSeconds"]) if a["enabled"] else None,
        "hf_token": SecretRef(secrets["hfToken"]["secretName"], secrets["hfToken"]["key"])
        if secrets["hfToken"]["secretName"] else None,
        "api_keys": SecretRef(secrets["apiKeys"]["secretName"], secrets["apiKeys"]["key"])
        if secrets["apiKeys"]["secretName"] else None,
        "head_resources": v["head"]["resources"],
        "worker_resources_base": v["worker"]["gpuResources" if config.engine.device == "gpu"
                                             else "cpuResources"],
        "node_selector": v["worker"]["nodeSelector"],
        "tolerations": v["worker"]["tolerations"],
        "extra_env": v["ray"]["extraEnv"],
        "upgrade_strategy": v["ray"]["upgradeStrategy"],
        "cache_claim": cache_claim(v),
    }


def cache_claim(values: dict) -> str | None:
    """The claim the chart mounts at /cache (`cacheroute.cacheClaim`) for RELEASE."""
    p = values["cache"]["persistence"]
    return (p["existingClaim"] or f"{RELEASE}-cache") if p["enabled"] else None


def normalise(obj: dict) -> dict:
    """Comparable form: Helm-only labels dropped, serveConfigV2 parsed."""
    obj = copy.deepcopy(obj)
    labels = obj.get("metadata", {}).get("labels", {})
    for key in HELM_ONLY_LABELS:
        labels.pop(key, None)
    if obj.get("kind") == "RayService":
        obj["spec"]["serveConfigV2"] = yaml.safe_load(obj["spec"]["serveConfigV2"])
    return obj


def pod_templates(rs: dict) -> list[dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    return [{"apiVersion": "v1", "kind": "PodTemplate",
             "metadata": {"name": f"{rs['metadata']['name']}-{name}"},
             "template": g["template"]} for name, g in groups]


def kubernetes_validate(docs: list[dict]) -> None:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        need("kubernetes-validate", "pip install kubernetes-validate (CI does)")
    stream = "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)
    out = run_tool([str(exe), "--strict", "-"], input=stream)
    report = out.stdout + out.stderr
    problems = [line for line in report.splitlines()
                if line.startswith(("ERROR", "CRITICAL")) or
                (line.startswith("WARN") and not any(f"kind {k} " in line for k in CRD_KINDS))]
    assert out.returncode == 0 and not problems, report
    # Every built-in object was checked against its schema (CRDs only warn).
    for d in docs:
        if d["kind"] not in CRD_KINDS:
            assert f"passed for resource {d['kind'].lower()}/{d['metadata']['name']}" in report, report
