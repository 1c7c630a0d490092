"""The Grafana dashboards and Prometheus rules: committed files equal the generator's
output (CI fails on drift), every query is valid PromQL over the metrics interface,
and the rules pass `promtool check` and their `promtool test rules` cases.

promtool comes from Debian's `prometheus` package (tools/fetch-helm.sh installs it);
without it those tests skip, or fail where CI sets CACHEROUTE_REQUIRE_DEPLOY_TOOLS=1.
The drift test needs grafana-foundation-sdk (the `test` extra, Python 3.11+).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from monitoring import CATALOGUE, series_names
from monitoring.metrics import UP, Kind

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS = ROOT / "dashboards"
CHART_DASHBOARDS = ROOT / "helm" / "cacheroute" / "dashboards"
PROMETHEUS = ROOT / "deploy" / "prometheus"
REQUIRE_TOOLS_ENV = "CACHEROUTE_REQUIRE_DEPLOY_TOOLS"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's macros, as promtool needs them: concrete durations.
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
EXPECTED = {"cacheroute-overview.json", "cacheroute-replicas.json", "cacheroute-router.json"}


def _promtool() -> str:
    for candidate in (ROOT / ".cache" / "tools" / "promtool", shutil.which("promtool")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    message = "`promtool` not installed: apt-get install -y prometheus (CI does)"
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _promtool_run(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run([_promtool(), *args], capture_output=True, text=True, check=False,
                         timeout=60, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(board: dict) -> Iterator[dict]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def _queries(board: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every target, annotation and variable of a dashboard."""
    for panel in _panels(board):
        for t in panel.get("targets", []):
            yield f"panel {panel['id']} ({panel['title']}) {t['refId']}", t["expr"]
    for a in board["annotations"]["list"]:
        yield f"annotation {a['name']}", a["expr"]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            # label_values(<selector>, <label>): the selector is the PromQL part.
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"])
            assert match, v["query"]
            yield f"variable {v['name']}", match.group(1)


def _walk(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _metric_names(expr: str) -> set[str]:
    # Every series is selected with braces ({job=...}); recorded names too.
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


# -- generated, committed, shipped -------------------------------------------------------

def test_committed_files_equal_the_generator() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="the `test` extra (Python 3.11+)")
    from monitoring.artefacts import generate, stale

    files = generate()
    wrong = [str(p.relative_to(ROOT)) for p in stale(files)]
    assert not wrong, f"stale generated files {wrong}: run `make dashboards`"
    # Deterministic: a second run produces the same text.
    assert generate() == files


def test_chart_ships_the_same_dashboards() -> None:
    ours = {p.name: p.read_bytes() for p in DASHBOARDS.glob("*.json")}
    chart = {p.name: p.read_bytes() for p in CHART_DASHBOARDS.glob("*.json")}
    assert set(ours) == EXPECTED
    assert chart == ours


def test_dashboards_are_stable_and_import_anywhere() -> None:
    for name, board in _dashboards().items():
        # A stable uid from the file name; Grafana caps uids at 40 characters.
        assert board["uid"] == name.removesuffix(".json") and len(board["uid"]) <= 40
        assert "id" not in board, "a dashboard id is per Grafana instance: leave it out"
        ids = [p["id"] for p in _panels(board)]
        assert ids == list(range(1, len(ids) + 1)), name
        assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in _panels(board))


def test_datasource_is_a_variable_never_a_uid() -> None:
    for name, board in _dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        ds = variables["datasource"]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus"), name
        assert "current" not in ds or not ds["current"], "no datasource pinned by default"
        refs = 0
        for path, value in _walk(board):
            if path.endswith(".datasource"):
                assert value == DATASOURCE, f"{name}{path}: {value}"
                refs += 1
            elif path.endswith(".uid") and not path.endswith(".datasource.uid"):
                assert path == ".uid", f"{name}{path}: a hard-coded uid"
        panels = [p for p in _panels(board) if p["type"] != "row"]
        for p in panels:
            assert p["datasource"] == DATASOURCE
            assert all(t["datasource"] == DATASOURCE for t in p["targets"]), p["title"]
        assert refs >= len(panels)


# -- the PromQL --------------------------------------------------------------------------

def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules, seen = [], 0
    for name, board in _dashboards().items():
        for where, expr in _queries(board):
            for macro, value in MACROS.items():
                expr = expr.replace(macro, value)
            rules.append({"record": f"cacheroute:check_{len(rules)}", "expr": expr,
                          "labels": {"where": f"{name} {where}"}})
            seen += 1
    assert seen > 30
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _promtool_run("check", "rules", str(path))


def test_queries_use_only_the_metrics_interface_of_the_selected_job() -> None:
    known = series_names()
    used: set[str] = set()
    for name, board in _dashboards().items():
        for where, expr in _queries(board):
            if where == "variable job":  # lists the jobs: the one query across all of them
                assert expr in known
                continue
            names = _metric_names(expr)
            assert names, f"{name} {where}: no selector in {expr!r}"
            assert names <= known, f"{name} {where}: unknown {names - known}"
            # Plain vLLM servers share the vllm:* names: every selector names the job.
            assert expr.count("{") == expr.count('{job=~"$job"'), f"{name} {where}: {expr}"
            used |= names
    # Every metric of the interface is on some dashboard (`up` is for the alerts).
    for m in CATALOGUE:
        if m is UP:
            continue
        name = m.bucket if m.kind is Kind.HISTOGRAM else m.name
        assert name in used, f"{m.name} is on no dashboard"


def test_ttft_quantiles_sum_the_histogram_by_bucket() -> None:
    overview = _dashboards()["cacheroute-overview.json"]
    exprs = [e for _, e in _queries(overview) if "time_to_first_token" in e]
    assert exprs
    for e in exprs:
        assert re.fullmatch(r"histogram_quantile\(0\.(5|99), sum by \(le\) \(rate\("
                            r'vllm:time_to_first_token_seconds_bucket\{job=~"\$job"\}'
                            r"\[\$__rate_interval\]\)\)\)", e), e


# -- the rules ---------------------------------------------------------------------------

def _rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_rules_pass_promtool_check() -> None:
    out = _promtool_run("check", "rules", str(PROMETHEUS / "rules.yml"))
    assert f"SUCCESS: {len(_rules())} rules found" in out
    out = _promtool_run("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out


def test_rules_pass_their_promtool_tests() -> None:
    assert "SUCCESS" in _promtool_run("test", "rules", "rules_test.yml", cwd=PROMETHEUS)


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert len(alerts) >= 7
    assert alerts <= fires, f"no firing test for {alerts - fires}"
    assert alerts <= quiet, f"no quiet test for {alerts - quiet}"
    recorded = {r["record"] for r in _rules() if "record" in r}
    checked = {name for t in tests for c in t.get("promql_expr_test", [])
               for name in recorded if name in c["expr"]}
    assert recorded == checked, f"no value test for {recorded - checked}"


def test_rules_use_only_the_metrics_interface_and_select_the_job() -> None:
    rules = _rules()
    known = series_names() | {r["record"] for r in rules if "record" in r}
    for r in rules:
        names = _metric_names(r["expr"])
        assert names and names <= known, (r, names - known)
        assert r["expr"].count("{") == r["expr"].count('{job="cacheroute"'), r["expr"]
        if "record" in r:  # level:metric:operations, aggregated to a deployment
            assert re.fullmatch(r"cacheroute:[a-z0-9_]+:[a-z0-9_]+", r["record"])
            assert "namespace, job" in r["expr"]
