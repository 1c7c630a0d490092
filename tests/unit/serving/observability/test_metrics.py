"""The one way a metric is declared (serving/observability/metrics.py), and that serving/
declares none another way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from serving.observability import metrics
from serving.observability.metrics import REGISTRY, Declared, Kind, MetricSet

ROOT = Path(__file__).resolve().parents[4]
# What defines a series when constructed; serving/ builds them only through metrics.py.
PROMETHEUS_MAKERS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum",
                     "CounterMetricFamily", "GaugeMetricFamily", "HistogramMetricFamily",
                     "SummaryMetricFamily", "InfoMetricFamily", "StateSetMetricFamily",
                     "GaugeHistogramMetricFamily", "UnknownMetricFamily"}
ALLOWED = {
    "serving/observability/metrics.py",
}


class ExampleMetrics(MetricSet):
    seen = metrics.counter("cacheroute_test_seen", "Things seen, by colour.", ["colour"],
                           initial=["red", "blue"])
    level = metrics.gauge("cacheroute_test_level", "A level.")
    pairs = metrics.counter("cacheroute_test_pairs", "Pairs.", ["a", "b"],
                            initial=[("x", "y")])


def test_a_set_is_on_the_app_registry_from_import_with_its_initial_labels() -> None:
    assert REGISTRY.get_sample_value("cacheroute_test_seen_total", {"colour": "red"}) == 0
    assert REGISTRY.get_sample_value("cacheroute_test_pairs_total", {"a": "x", "b": "y"}) == 0
    assert REGISTRY.get_sample_value("cacheroute_test_level") == 0


def test_instances_on_one_registry_share_its_metrics() -> None:
    registry = CollectorRegistry()
    first, second = ExampleMetrics(registry), ExampleMetrics(registry)
    first.seen.labels(colour="red").inc()
    second.seen.labels(colour="red").inc(2)
    assert first.seen is second.seen and isinstance(first.seen, Counter)
    assert registry.get_sample_value("cacheroute_test_seen_total", {"colour": "red"}) == 3
    assert registry.get_sample_value("cacheroute_test_seen_total", {"colour": "blue"}) == 0
    # The app's registry is another registry: untouched.
    assert REGISTRY.get_sample_value("cacheroute_test_seen_total", {"colour": "red"}) == 0
    assert ExampleMetrics().seen is ExampleMetrics.seen.on(REGISTRY)
    assert isinstance(ExampleMetrics(registry).level, Gauge)


def test_on_the_class_a_metric_is_its_declaration() -> None:
    assert isinstance(ExampleMetrics.seen, Declared)
    d = ExampleMetrics.seen.declaration
    assert (d.kind, d.name, d.labels, d.exposed_name) == (
        Kind.COUNTER, "cacheroute_test_seen", ("colour",), "cacheroute_test_seen_total")
    assert ExampleMetrics.level.declaration.exposed_name == "cacheroute_test_level"
    assert {n for n, _ in ExampleMetrics.declared_metrics()} == {"seen", "level", "pairs"}
    assert d in metrics.declared()


def test_a_name_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        metrics.gauge("cacheroute_test_level", "Again.")
    with pytest.raises(ValueError, match="declared twice"):
        metrics.collected(Kind.GAUGE, "cacheroute_test_level", "Again.")


def test_a_collected_family_is_declared_and_built_afresh() -> None:
    spec = metrics.collected(Kind.COUNTER, "cacheroute_test_collected", "Collected.", ["r"])
    assert spec.declaration.collected and spec.declaration in metrics.declared()
    first, second = spec.family(), spec.family()
    assert first is not second and first.name == "cacheroute_test_collected"
    assert first.type == "counter" and first.documentation == "Collected."


def _prometheus_makers_used(source: str) -> set[str]:
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
            used |= {a.name for a in node.names} & PROMETHEUS_MAKERS
        elif isinstance(node, ast.Attribute) and node.attr in PROMETHEUS_MAKERS:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id == "prometheus_client":
                used.add(node.attr)
    return used


def test_serving_declares_metrics_only_through_metrics_py() -> None:
    found = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in ALLOWED and (used := _prometheus_makers_used(path.read_text())):
            found.append(f"{rel}: {', '.join(sorted(used))}")
    assert not found, "declare these with serving/observability/metrics.py:\n" + "\n".join(found)
    for rel in sorted(ALLOWED - {"serving/observability/metrics.py"}):
        assert _prometheus_makers_used((ROOT / rel).read_text()), f"{rel}: remove from ALLOWED"
