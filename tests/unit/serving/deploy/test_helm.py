"""The Helm chart and the kustomize manifests, rendered and validated offline.

Needs the static `helm` and `kubectl` binaries (tools/fetch-helm.sh puts them in
.cache/tools/), `kubernetes-validate` in this Python environment and `promtool` (Debian
package `prometheus`). Each test that lacks one skips with the reason; CI installs them
all, so there every test runs. No cluster is contacted. Running the tools is
helm_tools.py's part; this module holds what the chart must render.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from monitoring import DEFAULTS
from serving.config import validate_config
from serving.deploy.rayservice import render_rayservice
from serving.deploy.serve_config import llm_deployment_name, render_serve_config
from tests.unit.serving.deploy.helm_tools import (
    CHART,
    K8S,
    PROMETHEUS,
    RELEASE,
    ROOT,
    VALUE_SETS,
    chart_objects,
    chart_rayservice,
    helm,
    kubernetes_validate,
    merged_values,
    need,
    normalise,
    pod_templates,
    render_args,
    run_tool,
    template_text,
    values_file,
    yaml_docs,
)


# -- helm lint / template / kubernetes-validate ---------------------------------------

@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(value_set: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values_file(value_set)))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_template_validates_strictly(value_set: str) -> None:
    docs = yaml_docs(template_text(value_set))
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "Service", "PodDisruptionBudget"} <= kinds
    # The RayService's pods are validated too, as the PodTemplates they are.
    kubernetes_validate(docs + pod_templates(chart_rayservice(value_set)))


def test_rayservice_uses_only_kuberay_v1_fields() -> None:
    # No CRD schema is available offline: pin the RayService field names we rely on
    # (KubeRay ray.io/v1) so a typo cannot pass as an unknown CRD field.
    for value_set in VALUE_SETS:
        rs = chart_rayservice(value_set)
        assert rs["apiVersion"] == "ray.io/v1"
        assert set(rs["spec"]) <= {"upgradeStrategy", "serveConfigV2", "rayClusterConfig"}
        assert rs["spec"]["upgradeStrategy"]["type"] in {"NewCluster", "None"}
        cluster = rs["spec"]["rayClusterConfig"]
        assert set(cluster) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                                "headGroupSpec", "workerGroupSpecs"}
        assert set(cluster.get("autoscalerOptions", {})) <= {"upscalingMode",
                                                             "idleTimeoutSeconds"}
        assert set(cluster["headGroupSpec"]) == {"rayStartParams", "template"}
        for g in cluster["workerGroupSpecs"]:
            assert set(g) == {"groupName", "replicas", "minReplicas", "maxReplicas",
                              "rayStartParams", "template"}
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for params in [cluster["headGroupSpec"]["rayStartParams"],
                       *(g["rayStartParams"] for g in cluster["workerGroupSpecs"])]:
            assert all(isinstance(v, str) for v in params.values()), params


# -- one source of truth ---------------------------------------------------------------

@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_serve_config_equals_cacheroute_render(value_set: str) -> None:
    args = render_args(value_set)
    helm_serve = yaml.safe_load(chart_rayservice(value_set)["spec"]["serveConfigV2"])
    assert helm_serve == render_serve_config(args["config"], autoscaling=args["autoscaling"])
    # And app_builder accepts it: the embedded config validates back unchanged.
    embedded = helm_serve["applications"][0]["args"]["config"]
    assert validate_config(embedded) == args["config"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rayservice_spec_equals_render_rayservice(value_set: str) -> None:
    helm_rs = normalise(chart_rayservice(value_set))
    ours = normalise(render_rayservice(**render_args(value_set)))
    assert helm_rs["spec"] == ours["spec"]
    assert helm_rs["metadata"]["name"] == ours["metadata"]["name"]


def test_router_policy_and_parameters_reach_the_deployment() -> None:
    for value_set, policy in (("gpu", "cacheroute"), ("api-keys", "ray-prefix")):
        serve = yaml.safe_load(chart_rayservice(value_set)["spec"]["serveConfigV2"])
        routing = serve["applications"][0]["args"]["config"]["routing"]
        assert routing["policy"] == policy
        assert routing == merged_values(value_set)["config"]["routing"]
    gpu = yaml.safe_load(chart_rayservice("gpu")["spec"]["serveConfigV2"])
    assert gpu["applications"][0]["args"]["config"]["routing"]["virtual_nodes"] == 200
    auto = yaml.safe_load(chart_rayservice("autoscaling")["spec"]["serveConfigV2"])
    [dep] = auto["applications"][0]["deployments"]
    config = validate_config(merged_values("autoscaling")["config"])
    assert dep["name"] == llm_deployment_name(config) == "LLMServer:llama-3_1-8b-instruct"
    assert dep["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 8,
                                         "target_ongoing_requests": 16}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_resources_and_security_context(value_set: str) -> None:
    rs = chart_rayservice(value_set)
    device = merged_values(value_set)["config"]["engine"]["device"]
    for pod in (p["template"]["spec"] for p in pod_templates(rs)):
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
            assert c["livenessProbe"] and c["readinessProbe"]
            assert ":" in c["image"] and not c["image"].endswith(":latest")
            for e in c["env"]:
                assert e["name"] not in {"HF_TOKEN", "CACHEROUTE_API_KEYS"} or "valueFrom" in e
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    wc = worker["containers"][0]
    assert wc["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "serve"}
    gpus = wc["resources"]["limits"].get("nvidia.com/gpu")
    if device == "gpu":
        n = str(merged_values(value_set)["config"]["engine"]["gpus_per_replica"])
        assert gpus == n and wc["resources"]["requests"]["nvidia.com/gpu"] == n
    else:
        assert gpus is None


def test_openai_service_and_disruption_budget_select_the_engine_pods() -> None:
    objs = chart_objects("api-keys")
    svc = objs[("Service", RELEASE)]
    engine_labels = chart_rayservice("api-keys")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][
        "template"]["metadata"]["labels"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"][0]["targetPort"] == "serve"
    assert svc["spec"]["selector"].items() <= engine_labels.items()
    pdb = objs[("PodDisruptionBudget", f"{RELEASE}-engines")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= engine_labels.items()
    env = {e["name"]: e for e in chart_rayservice("api-keys")["spec"]["rayClusterConfig"][
        "workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]}
    assert env["CACHEROUTE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "cacheroute-api-keys", "key": "api-keys"}
    assert "Secret" not in {k for k, _ in objs}


def test_monitors_scrape_ray_pods_and_the_app_metrics() -> None:
    gpu = chart_objects("gpu")
    pm = gpu[("PodMonitor", RELEASE)]
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    head, engine = pod_templates(chart_rayservice("gpu"))
    head_labels = head["template"]["metadata"]["labels"].items()
    assert pm["spec"]["selector"]["matchLabels"].items() <= head_labels
    # The app's /metrics (what the dashboards and rules read): through one pod per Ray
    # cluster, the head, so the ingress's series are scraped once, not once per engine pod.
    for value_set in ("gpu", "autoscaling"):
        objs = chart_objects(value_set)
        sm = objs[("ServiceMonitor", RELEASE)]
        metrics_svc = objs[("Service", f"{RELEASE}-metrics")]
        svc_labels = metrics_svc["metadata"]["labels"].items()
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc_labels
        assert metrics_svc["spec"]["clusterIP"] == "None"
        selector = metrics_svc["spec"]["selector"].items()
        assert selector <= head_labels
        assert not selector <= engine["template"]["metadata"]["labels"].items()
        [port] = metrics_svc["spec"]["ports"]
        assert port["targetPort"] == "serve"
        [endpoint] = sm["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
        # job = the release's full name: what the PrometheusRule's selectors name.
        assert {"targetLabel": "job", "replacement": RELEASE} in endpoint["relabelings"]
    assert ("PodMonitor", RELEASE) not in chart_objects("default")
    assert ("ServiceMonitor", RELEASE) not in chart_objects("default")


def test_a_metrics_token_reaches_the_pods_and_the_service_monitor() -> None:
    out = helm("template", RELEASE, str(CHART), "-f", str(values_file("gpu")),
               "--set", "secrets.metricsToken.secretName=scrape",
               "--set", "config.server.metrics_token_env=CACHEROUTE_METRICS_TOKEN")
    objs = {(d["kind"], d["metadata"]["name"]): d for d in yaml_docs(out.stdout)}
    [endpoint] = objs[("ServiceMonitor", RELEASE)]["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "scrape", "key": "metrics-token"}}
    [rs] = [d for d in objs.values() if d["kind"] == "RayService"]
    for group in pod_templates(rs):
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["CACHEROUTE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "scrape", "key": "metrics-token"}
    # Without it, Prometheus scrapes with no credentials, as before.
    [plain] = chart_objects("gpu")[("ServiceMonitor", RELEASE)]["spec"]["endpoints"]
    assert "authorization" not in plain


# -- values.schema.json through helm ----------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("config.replicas=two", "config.replicas: Invalid type"),
    ("config.engine.bogus=1", "Additional property bogus is not allowed"),
    ("unknownKey=1", "Additional property unknownKey is not allowed"),
    ("image.tag=latest", "image.tag"),
    ("config.server.api_keys={sk-inline}", "config.server.api_keys"),
    ("autoscaling.maxReplicas=many", "autoscaling.maxReplicas: Invalid type"),
])
def test_values_schema_rejects_bad_values(setting: str, message: str) -> None:
    for cmd in (["lint", "--strict", str(CHART)], ["template", RELEASE, str(CHART)]):
        out = helm(*cmd, "--set", setting, check=False)
        assert out.returncode != 0, f"helm {cmd[0]} accepted {setting}"
        assert message in out.stdout + out.stderr


@pytest.mark.parametrize("settings, message", [
    (["config.engine.enable_prefix_caching=false"], "needs config.engine.enable_prefix_caching"),
    (["autoscaling.enabled=true", "autoscaling.maxReplicas=1"], "autoscaling.maxReplicas (1)"),
    (["secrets.metricsToken.secretName=scrape"], "needs config.server.metrics_token_env"),
])
def test_cross_field_checks_fail_the_render(settings: list[str], message: str) -> None:
    args = [a for s in settings for a in ("--set", s)]
    out = helm("template", RELEASE, str(CHART), *args, check=False)
    assert out.returncode != 0 and message in out.stderr


# -- kustomize ---------------------------------------------------------------------------

@pytest.mark.parametrize("target, value_set", [("base", "default"), ("overlays/cpu", "cpu"),
                                               ("overlays/gpu", "gpu")])
def test_kustomize_builds_validate_and_equal_the_chart(target: str, value_set: str) -> None:
    kubectl = need("kubectl")
    out = run_tool([kubectl, "kustomize", str(K8S / target)], timeout=60)
    assert out.returncode == 0, out.stderr
    docs = yaml_docs(out.stdout)
    rs = next(d for d in docs if d["kind"] == "RayService")
    kubernetes_validate(docs + pod_templates(rs))
    ours = {(d["kind"], d["metadata"]["name"]): normalise(d) for d in docs}
    chart = {k: normalise(d) for k, d in chart_objects(value_set).items()}
    assert ours.keys() == chart.keys()
    for k, obj in chart.items():
        assert ours[k] == obj, f"{target}: {k} differs from the chart; run tools/gen_k8s.py"


# -- Prometheus rules -------------------------------------------------------------------

def _rule_groups(value_set: str = "gpu") -> list[dict]:
    [rule] = [d for d in yaml_docs(template_text(value_set)) if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def _standalone_groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]


def test_chart_rules_equal_the_standalone_rules() -> None:
    """One definition (monitoring/rules.py): with the default thresholds, the chart's
    PrometheusRule is deploy/prometheus/rules.yml, expression for expression."""
    text = helm("template", RELEASE, str(CHART), "--set", "prometheusRule.enabled=true",
                 "--show-only", "templates/prometheusrule.yaml").stdout
    [rule] = yaml_docs(text)
    assert rule["spec"]["groups"] == _standalone_groups()
    # The chart's thresholds are the generator's defaults, and each reaches its rule.
    values = merged_values("default")["prometheusRule"]
    assert {k: values[k] for k in DEFAULTS} == DEFAULTS
    text = helm("template", RELEASE, str(CHART), "--set", "prometheusRule.enabled=true",
                 "--set-json", "prometheusRule.maxSpillRatio=0.55", "--show-only",
                 "templates/prometheusrule.yaml").stdout
    exprs = {r.get("alert"): r["expr"] for g in yaml_docs(text)[0]["spec"]["groups"]
             for r in g["rules"]}
    assert exprs["CacheRouteSpillRateHigh"].endswith("> 0.55")
    # Another release selects its own job (its ServiceMonitor sets job=<fullname>).
    other = helm("template", "llm", str(CHART), "--set", "prometheusRule.enabled=true",
                  "--show-only", "templates/prometheusrule.yaml").stdout
    assert 'job="llm-cacheroute"' in other and 'job="cacheroute"' not in other


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    promtool = need("promtool", "apt-get install -y prometheus (CI does)")
    count = sum(len(g["rules"]) for g in _standalone_groups())
    for value_set in ("gpu", "autoscaling"):
        rules = tmp_path / f"{value_set}.yaml"
        rules.write_text(yaml.safe_dump({"groups": _rule_groups(value_set)}))
        out = run_tool([promtool, "check", "rules", str(rules)], timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"SUCCESS: {count} rules found" in out.stdout + out.stderr


def test_promtool_alerts_fire_on_synthetic_metrics(tmp_path: Path) -> None:
    """deploy/prometheus/rules_test.yml against the chart's rules of the gpu value set
    (its own TTFT threshold). Annotations are left out on both sides: they quote the
    thresholds, which differ from the file's; the file's own test checks them."""
    promtool = need("promtool", "apt-get install -y prometheus (CI does)")
    groups = copy.deepcopy(_rule_groups("gpu"))
    assert 'job="cacheroute"' in groups[0]["rules"][0]["expr"]
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            for alert in case["exp_alerts"]:
                alert.pop("exp_annotations", None)
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = run_tool([promtool, "test", "rules", "rules_test.yml"], cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# -- dashboards and NOTES -------------------------------------------------------------

def test_dashboard_configmap_ships_the_generated_dashboards(tmp_path: Path) -> None:
    need("helm")
    [cm] = [d for d in yaml_docs(template_text("default")) if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "cacheroute"
    ours = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    assert len(ours) == 3
    assert {k: json.loads(v) for k, v in cm["data"].items()} == ours
    off = yaml_docs(helm("template", RELEASE, str(CHART), "--set", "dashboards.enabled=false").stdout)
    assert not any(d["kind"] == "ConfigMap" for d in off)
    # A chart without dashboard files renders no (empty) ConfigMap.
    chart = tmp_path / "cacheroute"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "dashboards")
    bare = yaml_docs(helm("template", RELEASE, str(chart)).stdout)
    assert not any(d["kind"] == "ConfigMap" for d in bare)


def test_notes_tell_how_to_reach_the_endpoint(tmp_path: Path) -> None:
    # `helm install --dry-run` needs a cluster; render NOTES.txt as a plain template.
    need("helm")
    chart = tmp_path / "cacheroute"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-render.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')
    out = yaml.safe_load(helm("template", RELEASE, str(chart), "-f",
                               str(values_file("api-keys")), "--show-only",
                               "templates/notes-render.yaml").stdout)["notes"]
    assert "port-forward svc/cacheroute 8000:8000" in out
    assert "/ready" in out and "/v1/models" in out
    assert "Secret cacheroute-api-keys" in out
    assert "dashboards" in out.lower()
