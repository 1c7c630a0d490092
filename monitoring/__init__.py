"""cacheroute's Grafana dashboards and Prometheus rules, generated from Python.

The metrics interface (``metrics``) is the single list of series names (checked
against what serving/ declares); ``promql``
builds the shared quantities (hit rates, spill ratio, quantiles) from it; the
dashboards (``overview``, ``replicas``, ``decisions``, on grafana-foundation-sdk) and
the rules (``rules``) use those; ``artefacts`` turns them into the committed files.
Build-time only: nothing in serving/ imports this package. Regenerate with
`make dashboards`.

The facade re-exports what needs no Grafana SDK (the chart tests use the rules on any
Python); import ``monitoring.artefacts`` for the generator.
"""

from monitoring.metrics import CATALOGUE, UNCHARTED, Metric, series_names
from monitoring.rules import CHART, DEFAULTS, LOCAL_JOB, STANDALONE, groups

__all__ = [
    "CATALOGUE",
    "CHART",
    "DEFAULTS",
    "LOCAL_JOB",
    "STANDALONE",
    "UNCHARTED",
    "Metric",
    "groups",
    "series_names",
]
