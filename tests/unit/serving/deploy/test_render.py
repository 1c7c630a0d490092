"""`cacheroute render`: serveConfigV2, RayService and Helm values from one config.

Pure Python (no helm, kubectl or cluster); tests/unit/serving/deploy/test_helm.py checks the
chart and the manifests against these functions.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from serving.config import ConfigError, load_config, validate_config
from serving.deploy import rayservice, render, serve_config
from serving.deploy.helm_values import render_helm_values
from serving.deploy.rayservice import SecretRef, render_rayservice
from serving.deploy.serve_config import Autoscaling, render_serve_config

ROOT = Path(__file__).resolve().parents[4]
CHART = ROOT / "helm" / "cacheroute"
GPU = {
    "model": {"id": "qwen2.5-7b-instruct", "source": "Qwen/Qwen2.5-7B-Instruct"},
    "replicas": 4,
    "engine": {"device": "gpu", "gpus_per_replica": 2, "block_size": 16},
    "routing": {"policy": "cacheroute", "virtual_nodes": 200, "load_epsilon": 0.5},
}


def _from_app_py(name: str):
    """A self-contained function of serving/app.py, without importing Ray and vLLM
    (that import takes ~30 s): the render module mirrors it and must stay equal."""
    tree = ast.parse((ROOT / "serving" / "app.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    node.returns = None
    for arg in node.args.args:
        arg.annotation = None
    namespace: dict = {}
    code = compile(ast.Module(body=[node], type_ignores=[]), "serving/app.py", "exec")
    exec(code, namespace)  # noqa: S102 -- one function of our own source, parsed above
    return namespace[name]


def _app_py_constant(name: str) -> str:
    tree = ast.parse((ROOT / "serving" / "app.py").read_text())
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets):
            return ast.literal_eval(n.value)
    raise AssertionError(f"serving/app.py defines no {name}")


def _containers(rs: dict) -> dict[str, dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    return {"head": head, "worker": worker}


# -- serveConfigV2 ---------------------------------------------------------------------

def test_serve_config_carries_the_whole_validated_config() -> None:
    config = load_config()
    doc = render_serve_config(config)
    assert doc["http_options"] == {"host": "0.0.0.0", "port": 8000}
    [app] = doc["applications"]
    assert app["name"] == _app_py_constant("APP_NAME") == "cacheroute"
    assert app["route_prefix"] == "/"
    assert app["import_path"] == "serving.app:app_builder"
    assert app["args"] == {"config": config.model_dump(mode="json")}
    assert "deployments" not in app
    # What app_builder does with args.config: validate it back into the same config.
    assert validate_config(app["args"]["config"]) == config
    # JSON-safe (it travels through YAML and KubeRay's REST call).
    assert json.loads(json.dumps(doc)) == doc


def test_app_builder_is_the_serve_entry_point() -> None:
    tree = ast.parse((ROOT / "serving" / "app.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "app_builder" for n in tree.body)


def test_serve_config_is_a_valid_ray_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = validate_config(GPU)
    for autoscaling in (None, Autoscaling(max_replicas=8, target_ongoing_requests=16)):
        schema = ServeDeploySchema.model_validate(
            render_serve_config(config, autoscaling=autoscaling))
        assert schema.applications[0].import_path == "serving.app:app_builder"
        assert schema.http_options.port == config.server.port


@pytest.mark.parametrize("model_id", ["smollm2-135m-instruct", "qwen2.5-7b-instruct",
                                      "org/Model.v1.5"])
def test_llm_deployment_name_mirrors_the_app(model_id: str) -> None:
    config = validate_config({"model": {"id": model_id}})
    assert serve_config.llm_deployment_name(config) == _from_app_py("llm_deployment_name")(config)


def test_autoscaling_overrides_the_engine_deployment_with_the_config_as_floor() -> None:
    config = validate_config(GPU)
    doc = render_serve_config(config, autoscaling=Autoscaling(10, 12.0))
    [dep] = doc["applications"][0]["deployments"]
    assert dep == {
        "name": "LLMServer:qwen2_5-7b-instruct",
        "num_replicas": "auto",
        "autoscaling_config": {"min_replicas": 4, "max_replicas": 10,
                               "target_ongoing_requests": 12.0},
    }
    with pytest.raises(ConfigError, match="max_replicas .3. is below replicas .4."):
        render_serve_config(config, autoscaling=Autoscaling(3))


def test_routing_policy_and_parameters_reach_the_application() -> None:
    config = validate_config(GPU)
    routing = render_serve_config(config)["applications"][0]["args"]["config"]["routing"]
    assert routing["policy"] == "cacheroute"
    assert (routing["virtual_nodes"], routing["load_epsilon"]) == (200, 0.5)


# -- RayService --------------------------------------------------------------------------

def test_cpu_rayservice_shape() -> None:
    config = load_config()
    rs = render_rayservice(config)
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    spec = rs["spec"]
    assert yaml.safe_load(spec["serveConfigV2"]) == render_serve_config(config)
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == rayservice.RAY_VERSION
    assert cluster["enableInTreeAutoscaling"] is False
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [group] = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert group["rayStartParams"] == {"metrics-export-port": "8080", "num-cpus": "1"}
    worker = _containers(rs)["worker"]
    assert worker["image"] == "ghcr.io/cacheroute/cacheroute:0.1.0-cpu"
    assert "nvidia.com/gpu" not in json.dumps(worker["resources"])
    assert worker["resources"] == rayservice.WORKER_CPU_RESOURCES


def test_gpu_rayservice_requests_gpus_per_replica() -> None:
    config = validate_config(GPU)
    rs = render_rayservice(config, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                                 "effect": "NoSchedule"}],
                           node_selector={"nvidia.com/gpu.present": "true"})
    [group] = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["replicas"] == 4
    assert group["rayStartParams"]["num-gpus"] == "2"
    worker = _containers(rs)["worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert worker["image"].endswith(":0.1.0-gpu")
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    head = _containers(rs)["head"]
    assert "nvidia.com/gpu" not in json.dumps(head["resources"])


def test_probes_security_context_and_resources_are_set() -> None:
    rs = render_rayservice(load_config())
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"],
            cluster["workerGroupSpecs"][0]["template"]["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        c = pod["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/api/local_raylet_healthz"
        # The read-only root needs writable /tmp (Ray session dir), caches and shm.
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/cache", "/dev/shm"} <= mounts
    worker = _containers(rs)["worker"]
    assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "serve"}
    assert {"name": "serve", "containerPort": 8000} in worker["ports"]
    assert {"name": "metrics", "containerPort": 8080} in worker["ports"]


def test_secrets_are_referenced_never_inlined() -> None:
    rs = render_rayservice(load_config(), hf_token=SecretRef("hf", "token"),
                           api_keys=SecretRef("keys", "api-keys"))
    for c in _containers(rs).values():
        env = {e["name"]: e for e in c["env"]}
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {
            "secretKeyRef": {"name": "hf", "key": "token"}}}
        assert env["CACHEROUTE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
            "name": "keys", "key": "api-keys"}
        assert "value" not in env["HF_TOKEN"] and "value" not in env["CACHEROUTE_API_KEYS"]
    no_env = validate_config({"server": {"api_keys_env": None}})
    with pytest.raises(ConfigError, match="api_keys_env"):
        render_rayservice(no_env, api_keys=SecretRef("keys", "k"))


@pytest.mark.parametrize("image", ["repo/cacheroute", "repo/cacheroute:latest"])
def test_unpinned_images_are_refused(image: str) -> None:
    with pytest.raises(ConfigError, match="pin|latest"):
        render_rayservice(load_config(), image=image)


def test_autoscaling_rayservice_scales_worker_pods_with_serve() -> None:
    rs = render_rayservice(validate_config(GPU), autoscaling=Autoscaling(8, idle_timeout_s=120))
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    group = cluster["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (4, 8)
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert serve["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] == 8


# -- Helm values and the chart's own files --------------------------------------------

def test_helm_values_hold_the_config_and_a_pinned_image() -> None:
    config = validate_config(GPU)
    values = render_helm_values(config, autoscaling=Autoscaling(6),
                                hf_token=SecretRef("hf", "HF_TOKEN"))
    assert values["config"] == config.model_dump(mode="json")
    assert values["image"]["tag"] == "0.1.0-gpu"
    assert values["autoscaling"]["maxReplicas"] == 6
    assert values["secrets"]["hfToken"] == {"secretName": "hf", "key": "HF_TOKEN"}
    schema = json.loads((CHART / "values.schema.json").read_text())
    # The rendered values are valid chart values once merged over the defaults.
    jsonschema.validate(_merge(yaml.safe_load((CHART / "values.yaml").read_text()), values),
                        schema)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_chart_defaults_equal_the_shipped_config_and_render_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"] == load_config().model_dump(mode="json")
    assert values["head"]["resources"] == rayservice.HEAD_RESOURCES
    assert values["worker"]["cpuResources"] == rayservice.WORKER_CPU_RESOURCES
    assert values["worker"]["gpuResources"] == rayservice.WORKER_GPU_RESOURCES
    assert values["podSecurityContext"] == rayservice.POD_SECURITY_CONTEXT
    assert values["containerSecurityContext"] == rayservice.CONTAINER_SECURITY_CONTEXT
    assert values["image"]["repository"] == rayservice.DEFAULT_IMAGE_REPOSITORY
    assert values["ray"]["version"] == rayservice.RAY_VERSION
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == rayservice.APP_VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(rayservice.APP_VERSION)}"', pyproject, re.MULTILINE)
    assert re.search(rf'"ray\[serve\]=={re.escape(rayservice.RAY_VERSION)}"', pyproject)


def test_every_chart_value_is_documented() -> None:
    """Each key of values.yaml has a comment on its line or right above it; the keys
    inside Kubernetes-object values (resources, security contexts) are the object's."""
    data_keys = {"resources", "cpuResources", "gpuResources", "podSecurityContext",
                 "containerSecurityContext"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_data = any(k in data_keys for _, k in stack)
        stack.append((indent, name))
        if inside_data:
            continue
        if "#" not in line and not (i and lines[i - 1].strip().startswith("#")):
            undocumented.append(".".join(k for _, k in stack))
    assert not undocumented, f"values without a comment: {undocumented}"


def test_chart_values_and_schema_are_generated_from_the_config() -> None:
    """values.yaml's `config:` block and values.schema.json are what
    tools/gen_chart_values.py writes from the config classes now."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_chart_values.py"),
                          "--check"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_chart_routing_defaults_are_the_routing_cores() -> None:
    """The routing core's defaults are written once (router.PolicyConfig); the chart's
    values and its schema carry the same, through the config."""
    from router import PolicyConfig

    core = {f.name: f.default for f in dataclasses.fields(PolicyConfig)}
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["routing"]
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = {name: prop["default"] for name, prop in
                schema["properties"]["config"]["properties"]["routing"]["properties"].items()}
    shared = set(core) & set(values)
    assert "load_floor" in shared and "virtual_nodes" in shared
    for name in shared:
        assert values[name] == defaults[name] == core[name], name


@pytest.mark.parametrize("bad, where", [
    ({"config": {"replicas": "two"}}, "replicas"),
    ({"config": {"engine": {"bogus": 1}}}, "bogus"),
    ({"nope": True}, "nope"),
    ({"image": {"tag": "latest"}}, "latest"),
    ({"config": {"server": {"api_keys": ["inline-secret"]}}}, "api_keys"),
    ({"service": {"port": 0}}, "port"),
])
def test_values_schema_rejects_bad_values(bad: dict, where: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(base, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_merge(base, bad), schema)


def test_ci_value_sets_are_valid_configs() -> None:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    sets = sorted((CHART / "ci").glob("*-values.yaml"))
    assert {p.name for p in sets} >= {f"{n}-values.yaml" for n in
                                      ("default", "cpu", "gpu", "autoscaling", "api-keys")}
    for path in sets:
        merged = _merge(base, yaml.safe_load(path.read_text()) or {})
        jsonschema.validate(merged, schema)
        validate_config(merged["config"])


# -- the command line ------------------------------------------------------------------

def test_main_writes_the_three_files(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text(yaml.safe_dump(GPU))
    out = tmp_path / "out"
    rc = render.main(["--config", str(cfg), "--out", str(out), "--max-replicas", "6",
                      "--hf-token-secret", "hf", "--api-keys-secret", "keys:list"])
    assert rc == 0
    config = validate_config(GPU)
    serve = yaml.safe_load((out / "serve-config.yaml").read_text())
    assert serve == render_serve_config(config, autoscaling=Autoscaling(6))
    rs = yaml.safe_load((out / "rayservice.yaml").read_text())
    assert yaml.safe_load(rs["spec"]["serveConfigV2"]) == serve
    env = {e["name"]: e for e in _containers(rs)["worker"]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    assert env["CACHEROUTE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "keys",
                                                                       "key": "list"}
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert values["config"] == config.model_dump(mode="json")
    assert values["image"] == {"repository": rayservice.DEFAULT_IMAGE_REPOSITORY, "tag": "0.1.0-gpu"}
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.mark.parametrize("argv, message", [
    (["--config", "/no/such.yaml"], "no such file"),
    (["--bogus"], "unrecognized arguments"),
    (["--max-replicas", "1"], "max_replicas (1) is below replicas (2)"),
    (["--image", "repo/x:latest"], "latest"),
    (["--hf-token-secret", "name:"], "SECRET:KEY"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, argv, message) -> None:
    rc = render.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1, err


def test_bad_config_file_is_one_line(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("engine: {device: tpu}\n")
    assert render.main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "engine.device" in err and err.count("\n") == 1
