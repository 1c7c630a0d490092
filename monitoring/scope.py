"""What every dashboard shares: the deployment it shows and the events it marks.

A deployment is one Prometheus `job`: the local scrape config names it `cacheroute`, the
chart's ServiceMonitor sets it to the release's full name. Queries select it with
`job=~"$job"`; the variable lists the jobs that export the router's ring size.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import QueryVariable

from monitoring import metrics as m
from monitoring.panels import label_variable
from monitoring.promql import sum_increase

JOB = 'job=~"$job"'


def job_variable() -> QueryVariable:
    return label_variable("job", "Job", str(m.ROUTER_REPLICAS), multi=False)


def membership_annotation() -> tuple[str, str, str]:
    """Ring membership changes as annotations: they explain hit-rate dips (a new replica
    starts cold; a removed one's prefixes are prefilled again elsewhere)."""
    return ("Replica added or removed",
            f"{sum_increase(m.ROUTER_MEMBERSHIP_CHANGES, JOB, '2m')} > 0", "orange")
