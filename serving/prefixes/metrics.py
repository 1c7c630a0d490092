"""Prometheus series of the prefix registry (serving/prefixes/registry.py), on the app's
/metrics registry, declared as every app metric is (serving/observability/metrics.py).

Aggregates only. `/metrics` is public, and a per-prefix label (the key derives from
the content) would let anyone confirm a guess of a tenant's prompt by its key; each
prefix's own hits and misses are in `GET /v1/prefixes`, for its owner only.
"""

from __future__ import annotations

from serving.observability.metrics import MetricSet, counter, gauge


class PrefixMetrics(MetricSet):
    hits = counter("cacheroute_prefix_hits", "Chat requests starting with a registered "
                   "prefix whose full blocks were all cached.")
    misses = counter("cacheroute_prefix_misses", "Chat requests starting with a registered "
                     "prefix that found some of its blocks uncached.")
    rewarms = counter("cacheroute_prefix_rewarms", "Registered prefixes prewarmed again "
                      "because no replica held them.")
    registered = gauge("cacheroute_prefixes_registered",
                       "Registered prefixes, as this ingress last listed them.")
