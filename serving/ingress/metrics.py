"""Prometheus series of the ingress's admission limits (serving/ingress/admission_limits.py),
on the app's /metrics registry, declared as every app metric is
(serving/observability/metrics.py).

- `cacheroute_ingress_refused_requests_total{reason}`: requests refused before they
  were read: `rate` (a tenant over its `requests_per_s`, 429), `tenant_concurrency` (a
  tenant over its requests in flight, 429), `ingress_concurrency` (the ingress full,
  503).

No tenant label: `/metrics` needs no key, and which tenants exist and how much each
sends is not every scraper's business.
"""

from __future__ import annotations

from serving.ingress.request_quota import Reason
from serving.observability.metrics import MetricSet, counter


class AdmissionMetrics(MetricSet):
    refused = counter("cacheroute_ingress_refused_requests",
                      "Requests refused by the ingress's rate and concurrency limits.",
                      ["reason"], initial=[r.value for r in Reason])
