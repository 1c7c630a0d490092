"""What a run changed in the service's own counters, read from its ``GET /metrics``.

The app's ``/metrics`` (serving/observability/telemetry.py) carries, per replica (``replica``
label), the engine's counters under vLLM's names and the router's view of it,
plus the router's decision counters. A benchmark scrapes it before and after a
replay and takes differences:

* engine token hit rate: ``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``
  (tokens the engine looked up in its prefix cache and found), and
  ``vllm:prompt_tokens_cached_total / vllm:prompt_tokens_total`` (prompt tokens
  not computed); either may be missing on an engine that does not export it;
* requests finished per replica (``vllm:request_success_total``);
* spills: ``cacheroute_router_decisions_total{outcome="spill"}`` (only the
  ``cacheroute`` policy has this family; None for the others);
* replications ahead of a spill: ``cacheroute_replications_total{result}`` (sent,
  succeeded, failed; ``cacheroute`` only): prefills no client asked for, which the
  engine's hit rate counts and the clients' does not;
* spill waits: ``cacheroute_router_spill_waits_total{result}`` (owner_hit, spill,
  timeout, busy; ``cacheroute`` only): spills the wait for an owner turned into hits.

Replica values reach ``/metrics`` through Serve's routing stats, every
``request_routing_stats_period_s`` (2 s), so ``settled`` re-scrapes until two
readings agree before a run's "after" is trusted.

``LoadSampler`` scrapes ``cacheroute_replica_in_flight{replica}`` once a second
during a run (a thread; the replay's event loop is not touched): the per-replica
load over time for the chart, and the load skew, max / mean over replicas of each
replica's mean in-flight count (1.0 = perfectly even).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

# Per-replica counter families read, by their sample names.
_COUNTERS = {
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prompt_tokens_cached_total": "prompt_tokens_cached",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:request_success_total": "requests",
}
_IN_FLIGHT = "cacheroute_replica_in_flight"
_DECISIONS = "cacheroute_router_decisions_total"
# Counters labelled by ``result``, summed per result into the snapshot field named.
_BY_RESULT = {"cacheroute_replications_total": "replications",
              "cacheroute_router_spill_waits_total": "spill_waits"}


@dataclass(frozen=True, kw_only=True)
class MetricsSnapshot:
    """One scrape: counters per replica, and the router's decisions by outcome
    (None when the policy exports no decision counters)."""

    replicas: Mapping[str, Mapping[str, float]]
    in_flight: Mapping[str, float]
    decisions: Mapping[str, float] | None
    # Replications ahead of a spill by result; None when the service has none.
    replications: Mapping[str, float] | None = None
    # Spill waits by result; None when the service has none.
    spill_waits: Mapping[str, float] | None = None

    def counter(self, name: str) -> dict[str, float]:
        return {r: v[name] for r, v in self.replicas.items() if name in v}


def parse_metrics(text: str) -> MetricsSnapshot:
    from prometheus_client.parser import text_string_to_metric_families

    replicas: dict[str, dict[str, float]] = {}
    in_flight: dict[str, float] = {}
    decisions: dict[str, float] | None = None
    by_result: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            field_name = _BY_RESULT.get(s.name)
            if field_name is not None:
                results = by_result.setdefault(field_name, {})
                result = s.labels.get("result", "")
                results[result] = results.get(result, 0.0) + s.value
                continue
            if s.name == _DECISIONS:
                decisions = decisions if decisions is not None else {}
                outcome = s.labels.get("outcome", "")
                decisions[outcome] = decisions.get(outcome, 0.0) + s.value
                continue
            replica = s.labels.get("replica")
            if replica is None:
                continue
            if s.name == _IN_FLIGHT:
                in_flight[replica] = s.value
            elif s.name in _COUNTERS:
                replicas.setdefault(replica, {})[_COUNTERS[s.name]] = s.value
    return MetricsSnapshot(replicas=replicas, in_flight=in_flight, decisions=decisions,
                           **by_result)


# A plain vLLM server's own gauges whose sum is its in-flight count (bench/peer_run.py).
_ENGINE_IN_FLIGHT = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def engine_snapshot(texts: Mapping[str, str]) -> MetricsSnapshot:
    """One scrape of plain vLLM servers (no router of ours in front), from each
    server's ``/metrics`` text by a name for it: the per-replica counters as above,
    summed over the engine's own labels, and in flight = running + waiting. The
    router's families do not exist there, so decisions, replications and spill
    waits are None (not measured)."""
    from prometheus_client.parser import text_string_to_metric_families

    replicas: dict[str, dict[str, float]] = {}
    in_flight: dict[str, float] = {}
    for replica, text in texts.items():
        counters: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in _COUNTERS:
                    key = _COUNTERS[s.name]
                    counters[key] = counters.get(key, 0.0) + s.value
                elif s.name in _ENGINE_IN_FLIGHT:
                    in_flight[replica] = in_flight.get(replica, 0.0) + s.value
        replicas[replica] = counters
    return MetricsSnapshot(replicas=replicas, in_flight=in_flight, decisions=None)


def scrape(metrics_url: str, timeout_s: float = 30.0) -> MetricsSnapshot:
    response = httpx.get(metrics_url, timeout=timeout_s)
    response.raise_for_status()
    return parse_metrics(response.text)


def settled(metrics_url: str, *, quiet_s: float = 3.0, timeout_s: float = 60.0,
            fetch: Callable[[str], MetricsSnapshot] = scrape,
            sleep: Callable[[float], None] = time.sleep) -> MetricsSnapshot:
    """A scrape equal to the one ``quiet_s`` before it (or the last after ``timeout_s``)."""
    last = fetch(metrics_url)
    waited = 0.0
    while waited < timeout_s:
        sleep(quiet_s)
        waited += quiet_s
        now = fetch(metrics_url)
        if (now.replicas == last.replicas and now.decisions == last.decisions
                and now.replications == last.replications
                and now.spill_waits == last.spill_waits):
            return now
        last = now
    return last


@dataclass(frozen=True, kw_only=True)
class RunCounters:
    """Differences of two scrapes (after - before) over one run."""

    engine_hit_rate: float | None  # prefix-cache hits / queries, tokens
    engine_prompt_hit_rate: float | None  # prompt tokens cached / prompt tokens
    prefix_cache_queries: float
    requests_by_replica: dict[str, float]
    spills: int | None
    decisions: dict[str, float] | None
    # Replications ahead of a spill by result (sent, succeeded, failed); None: none exported.
    replications: dict[str, float] | None = None
    # Spill waits by result (owner_hit, spill, timeout, busy); None: none exported.
    spill_waits: dict[str, float] | None = None


def _delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    # A replica absent before had served nothing yet (series appear on first stats).
    return {r: after[r] - before.get(r, 0.0) for r in after}


def _delta_of(before: Mapping[str, float] | None,
              after: Mapping[str, float] | None) -> dict[str, float] | None:
    """``_delta`` of a family the service may not export (None: not exported)."""
    return None if after is None else _delta(before or {}, after)


def diff(before: MetricsSnapshot, after: MetricsSnapshot) -> RunCounters:
    def total(name: str) -> float | None:
        got = after.counter(name)
        return sum(_delta(before.counter(name), got).values()) if got else None

    def ratio(num: float | None, den: float | None) -> float | None:
        return num / den if num is not None and den else None

    queries = total("prefix_cache_queries")
    decisions = (None if after.decisions is None
                 else _delta(before.decisions or {}, after.decisions))
    return RunCounters(
        engine_hit_rate=ratio(total("prefix_cache_hits"), queries),
        engine_prompt_hit_rate=ratio(total("prompt_tokens_cached"), total("prompt_tokens")),
        prefix_cache_queries=queries or 0.0,
        requests_by_replica=_delta(before.counter("requests"), after.counter("requests")),
        spills=None if decisions is None else round(decisions.get("spill", 0.0)),
        decisions=decisions,
        replications=_delta_of(before.replications, after.replications),
        spill_waits=_delta_of(before.spill_waits, after.spill_waits),
    )


def skew(values: Sequence[float]) -> float | None:
    """max / mean; None when everything is zero or there is nothing."""
    if not values or sum(values) <= 0:
        return None
    return max(values) / (sum(values) / len(values))


@dataclass(frozen=True, kw_only=True)
class LoadSample:
    t_s: float  # seconds since the sampler started
    in_flight: Mapping[str, float]


def load_skew(samples: Sequence[LoadSample], replicas: int) -> float | None:
    """max / mean over replicas of the time-averaged in-flight count; a replica
    never seen counts as idle (up to ``replicas``)."""
    if not samples:
        return None
    names = sorted({r for s in samples for r in s.in_flight})
    means = [sum(s.in_flight.get(r, 0.0) for s in samples) / len(samples) for r in names]
    means += [0.0] * max(0, replicas - len(means))
    return skew(means)


@dataclass(kw_only=True)
class LoadSampler:
    """``with LoadSampler(url) as s: ...`` -- one scrape per ``period_s`` in a thread."""

    metrics_url: str
    period_s: float = 1.0
    fetch: Callable[[str], MetricsSnapshot] = scrape
    samples: list[LoadSample] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LoadSampler:  # noqa: PYI034 -- typing.Self needs 3.11
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 35)

    def _run(self) -> None:
        origin = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                snapshot = self.fetch(self.metrics_url)
            except Exception:  # noqa: BLE001 -- a missed sample is a gap, not a failed run
                self.errors += 1
            else:
                self.samples.append(LoadSample(t_s=round(started - origin, 3),
                                               in_flight=dict(snapshot.in_flight)))
            if self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started))):
                return
