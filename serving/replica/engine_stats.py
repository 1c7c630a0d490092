"""Per-replica engine telemetry: running totals kept by a vLLM stat logger.

vLLM reports scheduler and iteration stats to its stat loggers after every engine
step. `EngineStatsLogger` (registered as a `vllm.stat_logger_plugins` entry point in
pyproject.toml, so every engine in this environment loads it) folds them into one
`EngineTotals` per process. The replica (serving/replica/server.py) ships a snapshot in
Ray Serve's routing stats; the router side re-exports it to Prometheus with a
`replica` label under vLLM's own metric names (serving/observability/telemetry.py).

Why a process-wide sink: vLLM builds its stat loggers itself from a class, so the
logger cannot be handed an object; one engine runs per replica process, so one
totals object per process is exactly one per replica.

Counters are cumulative since the replica started, like Prometheus counters, so a
scrape that misses a routing-stats update loses nothing.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from vllm.config import VllmConfig

from serving.replica import engine_progress
from vllm.v1.metrics.buckets import histogram_buckets
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from serving.contract import ENGINE_STATS_KEY


@dataclass
class HistogramTotals:
    """A Prometheus-style histogram: per-bucket counts (last bucket is +Inf)."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.bounds = tuple(float(b) for b in self.bounds)
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # Prometheus buckets are upper-inclusive: value <= le.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


@dataclass
class EngineTotals:
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    generation_tokens: int = 0
    request_success: int = 0
    kv_cache_usage: float = 0.0
    running: int = 0
    waiting: int = 0
    ttft: HistogramTotals = field(
        default_factory=lambda: HistogramTotals(histogram_buckets("time_to_first_token")))
    e2e: HistogramTotals = field(
        default_factory=lambda: HistogramTotals(histogram_buckets("request_latency")))

    def record(self, scheduler_stats: SchedulerStats | None,
               iteration_stats: IterationStats | None) -> None:
        if scheduler_stats is not None:
            self.running = scheduler_stats.num_running_reqs
            # Same sum as vLLM's vllm:num_requests_waiting gauge.
            self.waiting = (scheduler_stats.num_waiting_reqs
                            + scheduler_stats.num_skipped_waiting_reqs)
            self.kv_cache_usage = scheduler_stats.kv_cache_usage
            self.prefix_cache_queries += scheduler_stats.prefix_cache_stats.queries
            self.prefix_cache_hits += scheduler_stats.prefix_cache_stats.hits
        if iteration_stats is not None:
            self.prompt_tokens += iteration_stats.num_prompt_tokens
            self.prompt_tokens_cached += iteration_stats.prompt_token_stats.cached_tokens
            self.generation_tokens += iteration_stats.num_generation_tokens
            for ttft in iteration_stats.time_to_first_tokens_iter:
                self.ttft.observe(ttft)
            for finished in iteration_stats.finished_requests:
                self.request_success += 1
                self.e2e.observe(finished.e2e_latency)

    def snapshot(self) -> dict[str, Any]:
        return {
            "prefix_cache_queries": self.prefix_cache_queries,
            "prefix_cache_hits": self.prefix_cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_cached": self.prompt_tokens_cached,
            "generation_tokens": self.generation_tokens,
            "request_success": self.request_success,
            "kv_cache_usage": self.kv_cache_usage,
            "running": self.running,
            "waiting": self.waiting,
            "ttft_seconds": self.ttft.snapshot(),
            "e2e_seconds": self.e2e.snapshot(),
        }


_lock = threading.Lock()
_totals = EngineTotals()


def snapshot() -> dict[str, Any]:
    """This process's engine totals, JSON-serialisable (for routing stats)."""
    with _lock:
        return _totals.snapshot()


class EngineStatsLogger(StatLoggerBase):
    """vLLM stat logger that feeds this process's `EngineTotals`."""

    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
        self.engine_index = engine_index

    def record(self, scheduler_stats: SchedulerStats | None,
               iteration_stats: IterationStats | None,
               mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
        with _lock:
            _totals.record(scheduler_stats, iteration_stats)
        if scheduler_stats is not None or iteration_stats is not None:
            # The engine core stepped (a partial prefill chunk has scheduler stats
            # only): the replica's hang signal (engine_progress.py).
            engine_progress.process_watch().on_step()

    def log_engine_initialized(self) -> None:
        pass
