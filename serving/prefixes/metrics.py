"""Prometheus series of the prefix registry (serving/prefixes/registry.py), on the app's
/metrics registry, declared as every app metric is (serving/observability/metrics.py).

Per-prefix counters: the label is the short key, bounded by ``max_prefixes`` (a
prefix's series are removed when it leaves the registry).
"""

from __future__ import annotations

from serving.observability.metrics import MetricSet, counter, gauge
from serving.prefixes.store import PrefixKey, short_key


class PrefixMetrics(MetricSet):
    hits = counter("cacheroute_prefix_hits", "Chat requests starting with a registered "
                   "prefix whose full blocks were all cached.", ["prefix"])
    misses = counter("cacheroute_prefix_misses", "Chat requests starting with a registered "
                     "prefix that found some of its blocks uncached.", ["prefix"])
    rewarms = counter("cacheroute_prefix_rewarms", "Registered prefixes prewarmed again "
                      "because no replica held them.")
    registered = gauge("cacheroute_prefixes_registered",
                       "Registered prefixes, as this ingress last listed them.")

    def drop(self, key: PrefixKey) -> None:
        for series in (self.hits, self.misses):
            try:
                series.remove(short_key(key))
            except KeyError:
                pass
