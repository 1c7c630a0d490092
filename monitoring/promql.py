"""PromQL fragments shared by the dashboards and the rules, so both compute a hit rate
or a quantile the same way.

`matchers` is the inside of a selector's braces: `job=~"$job"` in a dashboard (a
Grafana variable), `job="cacheroute"` in a rule. Every label a query filters or groups
a metric by must be one of its labels or the scrape's (`Metric.labels`,
`SCRAPE_LABELS`); building the query fails otherwise, so a dashboard cannot ask for a
label the app does not export.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from monitoring import metrics as m
from monitoring.metrics import SCRAPE_LABELS, Kind, Metric
from router.outcome import Outcome

_MATCHED_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def check_labels(metric: Metric, *, matchers: str = "", by: Sequence[str] = ()) -> None:
    """Raise if `matchers` or `by` name a label `metric` does not have."""
    used = {*_MATCHED_LABEL.findall(matchers), *by}
    unknown = used - SCRAPE_LABELS - set(metric.labels)
    if unknown:
        raise ValueError(f"{metric.name} has no label {', '.join(sorted(unknown))}")


def selector(metric: Metric | str, matchers: str, extra: str = "") -> str:
    inside = ", ".join(m for m in (matchers, extra) if m)
    if isinstance(metric, Metric):
        check_labels(metric, matchers=inside)
    return f"{metric}{{{inside}}}" if inside else str(metric)


def _agg(op: str, by: Sequence[str], inner: str) -> str:
    return f"{op} by ({', '.join(by)}) ({inner})" if by else f"{op}({inner})"


def sum_rate(metric: Metric, matchers: str, window: str, *, by: Sequence[str] = (),
             extra: str = "") -> str:
    assert metric.kind is Kind.COUNTER, metric.name
    check_labels(metric, by=by)
    return _agg("sum", by, f"rate({selector(metric, matchers, extra)}[{window}])")


def sum_increase(metric: Metric, matchers: str, window: str, *, by: Sequence[str] = ()) -> str:
    assert metric.kind is Kind.COUNTER, metric.name
    check_labels(metric, by=by)
    return _agg("sum", by, f"increase({selector(metric, matchers)}[{window}])")


def aggregate(op: str, metric: Metric, matchers: str, *, by: Sequence[str] = ()) -> str:
    assert metric.kind is Kind.GAUGE, metric.name
    check_labels(metric, by=by)
    return _agg(op, by, selector(metric, matchers))


def ratio(numerator: str, denominator: str) -> str:
    # A 0/0 ratio (no traffic) is NaN: compares false in alerts, shows as a gap in panels.
    return f"{numerator}\n/\n{denominator}"


def quantile(q: float, metric: Metric, matchers: str, window: str, *,
             by: Sequence[str] = ()) -> str:
    """The q-quantile of a histogram over all its series, or per `by` group."""
    check_labels(metric, matchers=matchers, by=by)
    inner = _agg("sum", ("le", *by), f"rate({selector(metric.bucket, matchers)}[{window}])")
    return f"histogram_quantile({q:g}, {inner})"


# -- the quantities the dashboards and the rules share --------------------------------------

def token_hit_rate(matchers: str, window: str, *, by: Sequence[str] = ()) -> str:
    """Prompt tokens served from the prefix cache over prompt tokens (finished requests)."""
    return ratio(sum_rate(m.PROMPT_TOKENS_CACHED, matchers, window, by=by),
                 sum_rate(m.PROMPT_TOKENS, matchers, window, by=by))


def prefix_cache_hit_rate(matchers: str, window: str, *, by: Sequence[str] = ()) -> str:
    """The engines' prefix-cache hits over lookups, in tokens."""
    return ratio(sum_rate(m.PREFIX_CACHE_HITS, matchers, window, by=by),
                 sum_rate(m.PREFIX_CACHE_QUERIES, matchers, window, by=by))


def predicted_hit_rate(matchers: str, window: str, *, by: Sequence[str] = ()) -> str:
    """Prompt tokens the router expected cached on its choice over prompt tokens routed."""
    return ratio(sum_rate(m.ROUTER_MATCHED_TOKENS, matchers, window, by=by),
                 sum_rate(m.ROUTER_PROMPT_TOKENS, matchers, window, by=by))


def prediction_delivered_ratio(matchers: str, window: str, *,
                               by: Sequence[str] = ()) -> str:
    """Cached tokens the engines delivered over those the router predicted, for the same
    requests: near 1 while the router and the engines agree on tokens and block hashes."""
    return ratio(sum_rate(m.DELIVERED_CACHED_TOKENS, matchers, window, by=by),
                 sum_rate(m.PREDICTED_CACHED_TOKENS, matchers, window, by=by))


def spill_ratio(matchers: str, window: str, *, by: Sequence[str] = ()) -> str:
    """Decisions that left the preferred replica because it was at its load cap."""
    spill = f'outcome="{Outcome.SPILL.value}"'
    return ratio(sum_rate(m.ROUTER_DECISIONS, matchers, window, by=by, extra=spill),
                 sum_rate(m.ROUTER_DECISIONS, matchers, window, by=by))
