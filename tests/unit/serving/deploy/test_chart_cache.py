"""The volume at /cache: a PersistentVolumeClaim by default, so a new pod (rescheduled,
replaced by an upgrade) loads vLLM's compile cache and the downloaded model instead of
compiling and downloading again; the user's own claim, or an emptyDir, on request.

Renders the chart with helm (skipped without it, like test_helm.py) and checks that
`cacheroute render` says the same.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from serving.config import load_config
from serving.deploy import render
from serving.deploy.helm_values import render_helm_values
from serving.deploy.rayservice import render_rayservice
from tests.unit.serving.deploy.helm_tools import (
    CHART,
    RELEASE,
    chart_rayservice,
    helm,
    merged_values,
    pod_templates,
    values_file,
    yaml_docs,
)

CLAIM = f"{RELEASE}-cache"


def _render(*settings: str, value_set: str = "gpu") -> list[dict]:
    args = [a for s in settings for a in ("--set", s)]
    return yaml_docs(helm("template", RELEASE, str(CHART), "-f", str(values_file(value_set)),
                          *args).stdout)


def _claims(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def _cache_volumes(rs: dict) -> list[dict]:
    """The volume mounted at /cache in each Ray pod (head, then the engine pods)."""
    out = []
    for group in pod_templates(rs):
        spec = group["template"]["spec"]
        [container] = spec["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/cache"]
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        out.append(volume)
    return out


def _rayservice(docs: list[dict]) -> dict:
    [rs] = [d for d in docs if d["kind"] == "RayService"]
    return rs


@pytest.mark.parametrize("value_set", ["default", "gpu"])
def test_default_keeps_the_cache_on_a_shared_claim_that_outlives_the_release(
        value_set: str) -> None:
    docs = _render(value_set=value_set)
    [pvc] = _claims(docs)
    assert pvc["metadata"]["name"] == CLAIM
    # Head, every engine pod and both clusters of a NewCluster upgrade mount it at once.
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == \
        merged_values(value_set)["cache"]["persistence"]["size"]
    assert "storageClassName" not in pvc["spec"]  # empty = the cluster's default class
    volumes = _cache_volumes(_rayservice(docs))
    assert len(volumes) == 2  # head and the engine group
    assert all(v == {"name": "cache", "persistentVolumeClaim": {"claimName": CLAIM}}
               for v in volumes)


@pytest.mark.parametrize("value_set", ["default", "gpu"])
def test_compile_hub_and_triton_caches_live_under_cache(value_set: str) -> None:
    for group in pod_templates(chart_rayservice(value_set)):
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        # vLLM's compile cache is VLLM_CACHE_ROOT/torch_compile_cache.
        for name in ("VLLM_CACHE_ROOT", "HF_HOME", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
            assert env[name] == "/cache" or env[name].startswith("/cache/"), (name, env[name])


def test_size_and_storage_class_reach_the_claim() -> None:
    [pvc] = _claims(_render("cache.persistence.size=200Gi",
                            "cache.persistence.storageClassName=efs-sc"))
    assert pvc["spec"]["storageClassName"] == "efs-sc"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    # Another release gets its own claim.
    other = yaml_docs(helm("template", "llm", str(CHART)).stdout)
    [pvc] = _claims(other)
    assert pvc["metadata"]["name"] == "llm-cacheroute-cache"
    assert {v["persistentVolumeClaim"]["claimName"] for v in _cache_volumes(_rayservice(other))} \
        == {"llm-cacheroute-cache"}


def test_an_existing_claim_is_mounted_and_none_created() -> None:
    docs = _render("cache.persistence.existingClaim=model-cache")
    assert _claims(docs) == []
    for volume in _cache_volumes(_rayservice(docs)):
        assert volume == {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}}


def test_persistence_off_falls_back_to_an_empty_dir() -> None:
    docs = _render("cache.persistence.enabled=false",
                   "cache.persistence.existingClaim=ignored")
    assert _claims(docs) == []
    for volume in _cache_volumes(_rayservice(docs)):
        assert volume == {"name": "cache", "emptyDir": {}}


@pytest.mark.parametrize("setting, message", [
    ("cache.persistence.enabled=yes", "cache.persistence.enabled: Invalid type"),
    ("cache.persistence.size=lots", "cache.persistence.size"),
    ("cache.persistence.existingClaim=Not_A_Name", "cache.persistence.existingClaim"),
    ("cache.persistence.accessMode=ReadWriteOnce", "Additional property accessMode"),
])
def test_values_schema_checks_the_cache_values(setting: str, message: str) -> None:
    out = helm("template", RELEASE, str(CHART), "--set", setting, check=False)
    assert out.returncode != 0 and message in out.stdout + out.stderr


# -- `cacheroute render` (no helm) ------------------------------------------------------

def test_render_rayservice_mounts_a_given_claim_else_an_empty_dir() -> None:
    config = load_config()
    for volume in _cache_volumes(render_rayservice(config)):
        assert volume == {"name": "cache", "emptyDir": {}}
    for volume in _cache_volumes(render_rayservice(config, cache_claim="model-cache")):
        assert volume == {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}}


def test_render_cli_cache_claim_reaches_rayservice_and_values(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert render.main(["--out", str(out), "--cache-claim", "model-cache"]) == 0
    rs = yaml.safe_load((out / "rayservice.yaml").read_text())
    assert {v["persistentVolumeClaim"]["claimName"] for v in _cache_volumes(rs)} == {
        "model-cache"}
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert values["cache"] == {"persistence": {"enabled": True, "existingClaim": "model-cache"}}
    # Without it, the values leave the chart's default (its own claim) alone.
    assert "cache" not in render_helm_values(load_config())


def test_rendered_values_with_a_claim_pass_the_chart_schema() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    ours = render_helm_values(load_config(), cache_claim="model-cache")
    base["cache"]["persistence"].update(ours["cache"]["persistence"])
    jsonschema.validate(base, schema)
