"""The app's one Prometheus registry, and the one way a metric is declared on it.

Every series the ingress process serves on ``GET /metrics``
(serving/observability/telemetry.py) is declared once, with its name, help and label
names, through this module:

- ``counter``, ``gauge``, ``histogram``: a metric a component updates, declared as a
  class attribute of the component's ``MetricSet`` (``RouterMetrics`` and
  ``PrewarmMetrics`` in serving/routing/metrics.py, ``FailoverMetrics``,
  ``DocumentMetrics``, ``PrefixMetrics`` in the ``metrics.py`` of their packages).
  Declaring creates it on the app's ``REGISTRY`` at import, with its ``initial`` label
  values, so a scrape lists it at 0 before the first event and ``rate()`` sees the
  first one. An instance of the set is bound to one registry: the app's by default,
  a test's own ``CollectorRegistry`` to read exact values; a registry gets each metric
  once, however many instances (one per router) share it.
- ``collected``: a family a collector builds at scrape time from values read then
  (serving/observability/telemetry.py: each replica's engine telemetry and what the
  routers know of it).

``declared()`` lists them all; monitoring/'s catalogue, which the dashboards and the
alert rules are built on, is checked against it (tests/unit/monitoring/test_catalogue.py),
so a metric added, renamed or relabelled here fails that test until
monitoring/metrics.py says the same. Metric names are as prometheus_client takes them:
a counter is exposed with ``_total`` (``Declaration.exposed_name``).

A dedicated registry, not prometheus_client's global one: vLLM modules imported into
the ingress process register their own (replica-less) collectors there.

Cost: a declaration is a dict entry and one metric object; a set's metrics are looked
up once per instance, so updating one is prometheus_client's own cost.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

REGISTRY = CollectorRegistry(auto_describe=True)


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Declaration:
    """One metric as the app exposes it."""

    kind: Kind
    name: str  # as declared; a counter is exposed as name + "_total"
    help: str
    labels: tuple[str, ...] = ()
    collected: bool = False  # built by a collector at each scrape

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.kind is Kind.COUNTER else self.name


_declared: dict[str, Declaration] = {}
_lock = threading.Lock()


def _declare(declaration: Declaration) -> None:
    with _lock:
        if declaration.name in _declared:
            raise ValueError(f"metric {declaration.name!r} is declared twice")
        _declared[declaration.name] = declaration


def declared() -> tuple[Declaration, ...]:
    """Every metric declared in this process so far (their modules imported)."""
    with _lock:
        return tuple(_declared.values())


M = TypeVar("M", Counter, Gauge, Histogram)


class Declared(Generic[M]):
    """A metric of a ``MetricSet``: read on the class, its declaration; on an
    instance, the metric on that instance's registry."""

    def __init__(self, declaration: Declaration, create: Callable[[CollectorRegistry], M],
                 initial: Sequence[tuple[str, ...]]) -> None:
        self.declaration = declaration
        self._create = create
        self._initial = tuple(initial)
        self._by_registry: weakref.WeakKeyDictionary[CollectorRegistry, M] = (
            weakref.WeakKeyDictionary())
        _declare(declaration)
        self.on(REGISTRY)

    def on(self, registry: CollectorRegistry) -> M:
        """This metric on ``registry``, created there the first time (a Prometheus
        registry takes each name once)."""
        metric = self._by_registry.get(registry)
        if metric is None:
            with _lock:
                metric = self._by_registry.get(registry)
                if metric is None:
                    metric = self._create(registry)
                    for values in self._initial:
                        metric.labels(*values)
                    self._by_registry[registry] = metric
        return metric

    @overload
    def __get__(self, instance: None, owner: type) -> Declared[M]: ...

    @overload
    def __get__(self, instance: MetricSet, owner: type) -> M: ...

    def __get__(self, instance: MetricSet | None, owner: type) -> Declared[M] | M:
        return self if instance is None else self.on(instance.registry)


class MetricSet:
    """A component's metrics: ``Declared`` class attributes, bound to one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        # Looked up once: reading one later is a plain attribute (the instance's
        # dict wins over the class's non-data descriptor).
        for name, metric in self.declared_metrics():
            self.__dict__[name] = metric.on(registry)

    @classmethod
    def declared_metrics(cls) -> Iterator[tuple[str, Declared[Any]]]:
        seen: set[str] = set()
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if isinstance(value, Declared) and name not in seen:
                    seen.add(name)
                    yield name, value


def _label_values(initial: Iterable[str | Sequence[str]]) -> list[tuple[str, ...]]:
    return [(v,) if isinstance(v, str) else tuple(v) for v in initial]


def counter(name: str, help: str, labels: Sequence[str] = (), *,
            initial: Iterable[str | Sequence[str]] = ()) -> Declared[Counter]:
    """A counter; ``initial``: label values (one string per value of a single label,
    else a tuple in label order) that exist from the start at 0."""
    declaration = Declaration(Kind.COUNTER, name, help, tuple(labels))
    return Declared(declaration, lambda registry: Counter(
        name, help, labels, registry=registry), _label_values(initial))


def gauge(name: str, help: str, labels: Sequence[str] = ()) -> Declared[Gauge]:
    declaration = Declaration(Kind.GAUGE, name, help, tuple(labels))
    return Declared(declaration, lambda registry: Gauge(
        name, help, labels, registry=registry), ())


def histogram(name: str, help: str, labels: Sequence[str] = (), *,
              buckets: Sequence[float],
              initial: Iterable[str | Sequence[str]] = ()) -> Declared[Histogram]:
    declaration = Declaration(Kind.HISTOGRAM, name, help, tuple(labels))
    return Declared(declaration, lambda registry: Histogram(
        name, help, labels, buckets=buckets, registry=registry), _label_values(initial))


_FAMILIES = {Kind.COUNTER: CounterMetricFamily, Kind.GAUGE: GaugeMetricFamily,
             Kind.HISTOGRAM: HistogramMetricFamily}


@dataclass(frozen=True)
class Collected:
    """A family a collector yields afresh at every scrape."""

    declaration: Declaration

    def family(self) -> Metric:
        d = self.declaration
        return _FAMILIES[d.kind](d.name, d.help, labels=list(d.labels))


def collected(kind: Kind, name: str, help: str, labels: Sequence[str] = ()) -> Collected:
    declaration = Declaration(kind, name, help, tuple(labels), collected=True)
    _declare(declaration)
    return Collected(declaration)
