"""Grafana building blocks over grafana-foundation-sdk: a dashboard with stable panel ids,
the `datasource` variable every query goes through, and the few panel shapes we use.

Every panel, query, variable and annotation names its data source as
`{"type": "prometheus", "uid": "${datasource}"}`: the dashboards import into any
Grafana, whatever uid its Prometheus has. Panel ids count up in the order panels are
added, so regenerating yields byte-identical JSON.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

DATASOURCE_VAR = "datasource"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
TAG = "cacheroute"
# A dashboard's uid is `cacheroute-<slug>`: stable, so links and bookmarks survive
# regeneration and re-import (Grafana caps uids at 40 characters).
UID_PREFIX = "cacheroute-"
# Grafana's own rate window: at least four scrape intervals at any zoom level.
RATE = "$__rate_interval"
WIDTH = 24  # Grafana's grid is 24 columns wide.


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def _targets(queries: Sequence[Query]) -> list[Builder[Dataquery]]:
    return [prom_b.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE).range() for i, q in enumerate(queries)]


def timeseries(title: str, description: str, unit: str, queries: Sequence[Query], *,
               span: int = 12, height: int = 8, stack: bool = False,
               min_value: float | None = None, max_value: float | None = None,
               bars: bool = False) -> ts_b.Panel:
    panel = (ts_b.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(span).height(height).targets(_targets(queries))
             .legend(common_b.VizLegendOptions().display_mode(common_m.LegendDisplayMode.LIST)
                     .placement(common_m.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common_b.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI)
                      .sort(common_m.SortOrder.DESCENDING))
             .fill_opacity(30 if stack else 10).line_width(1))
    if stack:
        panel = panel.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    if bars:
        panel = panel.draw_style(common_m.GraphDrawStyle.BARS).fill_opacity(80)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def stat(title: str, description: str, unit: str, queries: Sequence[Query], *, span: int = 6,
         height: int = 4, red_below: float | None = None,
         red_above: float | None = None) -> stat_b.Panel:
    """Current values; `red_below`/`red_above` colour them when out of bounds."""
    steps = [dash_m.Threshold(value=None, color="green")]
    if red_below is not None:
        steps = [dash_m.Threshold(value=None, color="red"),
                 dash_m.Threshold(value=red_below, color="green")]
    if red_above is not None:
        steps.append(dash_m.Threshold(value=red_above, color="red"))
    return (stat_b.Panel().title(title).description(description).datasource(DATASOURCE)
            .unit(unit).span(span).height(height).targets(_targets(queries))
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(common_m.BigValueGraphMode.AREA)
            .color_mode(common_m.BigValueColorMode.VALUE)
            .thresholds(dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE)
                        .steps(steps)))


def datasource_variable() -> dash_b.DatasourceVariable:
    return dash_b.DatasourceVariable(DATASOURCE_VAR).label("Data source").type("prometheus")


def label_variable(name: str, label: str, metric_selector: str, *, multi: bool) -> \
        dash_b.QueryVariable:
    """A variable listing the values of label `name` on `metric_selector`'s series."""
    var = (dash_b.QueryVariable(name).label(label).datasource(DATASOURCE)
           .query(f"label_values({metric_selector}, {name})")
           .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
           .sort(dash_m.VariableSort.ALPHABETICAL_ASC))
    if multi:
        # "All" expands to a regex of the listed values, never `.*`: plain vLLM
        # servers scraped by the same Prometheus share the vllm:* names.
        var = var.multi(True).include_all(True)
    return var


class Board:
    """A dashboard under construction."""

    def __init__(self, slug: str, title: str, description: str,
                 variables: Sequence[dash_b.DatasourceVariable | dash_b.QueryVariable],
                 annotations: Sequence[tuple[str, str, str]] = ()) -> None:
        self.uid = UID_PREFIX + slug
        self._ids = itertools.count(1)
        self._dash = (dash_b.Dashboard(title).uid(self.uid).description(description)
                      .tags([TAG]).editable().timezone("browser").time("now-1h", "now")
                      .refresh("30s").tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
                      .link(dash_b.DashboardLink("cacheroute")
                            .type(dash_m.DashboardLinkType.DASHBOARDS).tags([TAG])
                            .as_dropdown(True).include_vars(True).keep_time(True))
                      .variables([datasource_variable(), *variables]))
        for name, expr, colour in annotations:
            self._dash = self._dash.annotation(
                dash_b.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True)
                .icon_color(colour).expr(expr))

    def row(self, title: str) -> Board:
        self._dash = self._dash.with_row(dash_b.Row(title).id(next(self._ids)))
        return self

    def add(self, *panels: ts_b.Panel | stat_b.Panel) -> Board:
        for panel in panels:
            self._dash = self._dash.with_panel(panel.id(next(self._ids)))
        return self

    def to_dict(self) -> dict:
        # Through JSON: plain dicts and lists, as they will be committed.
        return json.loads(json.dumps(self._dash.build(), cls=JSONEncoder))
