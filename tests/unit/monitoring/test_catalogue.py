"""monitoring/'s catalogue against what serving/ declares: every metric the app exports is
listed with its kind and labels, and nothing listed is missing from the app.

serving/'s metrics are declared through serving/observability/metrics.py at import; the
modules that declare some are found by reading serving/ (any module that imports a
declaring helper), so a new metrics module is checked without being named here. They
are imported in a fresh interpreter: what it declares is what the app exports, and
nothing another test declared.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitoring.metrics import CATALOGUE, UNCHARTED, UP, Kind, Metric
from monitoring.promql import check_labels, sum_rate
from monitoring.rules import CHART, STANDALONE, groups

ROOT = Path(__file__).resolve().parents[3]
DECLARING = {"counter", "gauge", "histogram", "collected"}


def declaring_modules() -> list[str]:
    found = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module == "serving.observability.metrics"
                    and DECLARING & {a.name for a in node.names}):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
                break
    return found


_DECLARED = """
import importlib, json, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
from serving.observability.metrics import declared
print(json.dumps([[d.exposed_name, d.kind.value, d.labels] for d in declared()]))
"""


def app_metrics() -> set[Metric]:
    out = subprocess.run([sys.executable, "-c", _DECLARED, *declaring_modules()], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return {Metric(name, Kind(kind), tuple(labels))
            for name, kind, labels in json.loads(out.stdout.splitlines()[-1])}


def test_the_metric_modules_are_found() -> None:
    assert {"serving.routing.metrics", "serving.failover.metrics", "serving.documents.metrics",
            "serving.prefixes.metrics", "serving.observability.telemetry"} <= set(
        declaring_modules())


def test_every_app_metric_is_catalogued_with_its_kind_and_labels() -> None:
    listed = set(CATALOGUE) | set(UNCHARTED)
    assert len(listed) == len(CATALOGUE) + len(UNCHARTED), "a metric is listed twice"
    exported = app_metrics()
    missing = sorted(map(repr, exported - listed))
    stale = sorted(map(repr, listed - exported - {UP}))
    assert not missing, "declared in serving/, not in monitoring/metrics.py:\n" + "\n".join(
        missing)
    assert not stale, "in monitoring/metrics.py, not declared (or declared otherwise) in " \
        "serving/:\n" + "\n".join(stale)


def test_up_is_the_only_series_the_app_does_not_export() -> None:
    assert UP.name not in {m.name for m in app_metrics()}


def test_a_query_on_a_label_its_metric_lacks_does_not_build() -> None:
    decisions = next(m for m in CATALOGUE if m.name == "cacheroute_router_decisions_total")
    assert "outcome" in sum_rate(decisions, 'job="x"', "5m", by=("outcome",))
    with pytest.raises(ValueError, match="no label replica"):
        sum_rate(decisions, 'job="x"', "5m", by=("replica",))
    with pytest.raises(ValueError, match="no label stage"):
        sum_rate(decisions, 'job="x"', "5m", extra='stage="decide"')
    check_labels(decisions, matchers='job=~"$job", namespace="a", outcome!="spill"',
                 by=("instance", "pod"))


def test_the_rules_build_with_existing_labels_only() -> None:
    # Each query is checked as it is built (the dashboards' too, by the drift test).
    assert groups(STANDALONE) and groups(CHART)
