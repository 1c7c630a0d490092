"""The chart's NetworkPolicy: the Ray pods reach each other on every port (the KV-event
ports among them), everyone else only the API, metrics and operator ports.

Rendered offline with helm (tests skip without it, see helm_tools.py).
"""

from __future__ import annotations

import json

import pytest

from serving.replica.kv_endpoint import KV_EVENTS_PORTS
from tests.unit.serving.deploy.helm_tools import (
    CHART,
    RELEASE,
    chart_objects,
    chart_rayservice,
    helm,
    kubernetes_validate,
    merged_values,
    pod_templates,
    yaml_docs,
)

METRICS_PORT = 8080
DASHBOARD_PORT = 8265


def _policy(docs: list[dict]) -> dict:
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return policy


def _pod_labels(value_set: str) -> list[dict[str, str]]:
    return [t["template"]["metadata"]["labels"] for t in pod_templates(chart_rayservice(value_set))]


def _admitting(policy: dict, port: int) -> list[dict]:
    """The ingress rules that admit TCP ``port`` (a rule without ports admits all)."""
    return [rule for rule in policy["spec"]["ingress"]
            if "ports" not in rule or any(p["port"] == port for p in rule["ports"])]


def _is_ray_pods_only(rule: dict, pod_labels: list[dict[str, str]]) -> bool:
    """A rule whose every source is a podSelector (this namespace) matching every Ray pod."""
    sources = rule.get("from")
    return bool(sources) and all(
        set(peer) == {"podSelector"} and all(
            peer["podSelector"]["matchLabels"].items() <= labels.items() for labels in pod_labels)
        for peer in sources)


@pytest.mark.parametrize("value_set", ["default", "gpu", "autoscaling"])
def test_the_policy_selects_every_ray_pod_of_the_release(value_set: str) -> None:
    policy = chart_objects(value_set)[("NetworkPolicy", RELEASE)]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]["matchLabels"].items()
    for labels in _pod_labels(value_set):
        assert selector <= labels.items()


def test_the_kv_event_ports_are_reached_only_from_the_ray_pods() -> None:
    policy = chart_objects("default")[("NetworkPolicy", RELEASE)]
    pod_labels = _pod_labels("default")
    for port in KV_EVENTS_PORTS:  # PUB and replay
        rules = _admitting(policy, port)
        assert rules, f"KV-event port {port} is closed to the routers"
        assert all(_is_ray_pods_only(rule, pod_labels) for rule in rules), port


def test_only_the_api_metrics_and_dashboard_ports_admit_other_sources() -> None:
    policy = chart_objects("default")[("NetworkPolicy", RELEASE)]
    api_port = merged_values("default")["config"]["server"]["port"]
    pod_labels = _pod_labels("default")
    open_ports = {p["port"] for rule in policy["spec"]["ingress"]
                  if not _is_ray_pods_only(rule, pod_labels) for p in rule["ports"]}
    assert open_ports == {api_port, METRICS_PORT, DASHBOARD_PORT}
    # By default clients and Prometheus may come from anywhere (no `from`); the
    # dashboard (job submission: code execution) only from the KubeRay operator.
    for port in (api_port, METRICS_PORT):
        assert any("from" not in rule for rule in _admitting(policy, port)), port
    for rule in _admitting(policy, DASHBOARD_PORT):
        assert _is_ray_pods_only(rule, pod_labels) or rule["from"] == [
            {"namespaceSelector": {},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]


def test_api_and_metrics_sources_are_configurable() -> None:
    api_from = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    metrics_from = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    docs = yaml_docs(helm("template", RELEASE, str(CHART),
                          "--set-json", f"networkPolicy.apiFrom={json.dumps(api_from)}",
                          "--set-json", f"networkPolicy.metricsFrom={json.dumps(metrics_from)}",
                          "--set-json", "networkPolicy.operatorFrom=[]").stdout)
    policy = _policy(docs)
    kubernetes_validate([policy])
    api_port = merged_values("default")["config"]["server"]["port"]
    pod_labels = _pod_labels("default")
    [api_rule] = [r for r in _admitting(policy, api_port) if not _is_ray_pods_only(r, pod_labels)]
    assert api_rule["from"] == api_from
    [metrics_rule] = [r for r in _admitting(policy, METRICS_PORT)
                      if not _is_ray_pods_only(r, pod_labels)]
    assert metrics_rule["from"] == metrics_from
    # With no operator sources the dashboard is the Ray pods' alone.
    assert all(_is_ray_pods_only(r, pod_labels) for r in _admitting(policy, DASHBOARD_PORT))


def test_the_policy_can_be_turned_off() -> None:
    docs = yaml_docs(helm("template", RELEASE, str(CHART),
                          "--set", "networkPolicy.enabled=false").stdout)
    assert "NetworkPolicy" not in {d["kind"] for d in docs}


def test_a_source_that_is_not_a_network_policy_peer_is_refused() -> None:
    out = helm("template", RELEASE, str(CHART),
               "--set-json", 'networkPolicy.apiFrom=[{"pods": {}}]', check=False)
    assert out.returncode != 0
    assert "Additional property pods is not allowed" in out.stderr
