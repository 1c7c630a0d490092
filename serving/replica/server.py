"""The replica: `ray.serve.llm`'s LLMServer, warmed before Serve calls it running.

Ray Serve marks a replica RUNNING when its constructor returns. Upstream's constructor
returns once the vLLM engine object exists, but on CPU the first generation still pays
for lazy initialisation (tens of seconds), so a load balancer that trusts RUNNING sends
the first users into that wait. Here the constructor also runs one short generation,
so RUNNING, the `/ready` endpoint and the CLI's ready line all mean "has served".

With the `cacheroute` policy the engine also publishes its KV-cache events (ZMQ PUB
bound to this node's Ray address, at a port fixed by the replica's rank on the node:
serving/replica/kv_endpoint.py) and the replica advertises that endpoint in Serve's
routing stats, where the router's ownership index subscribes to it. The routing stats also
carry the engine's cache telemetry (serving/replica/engine_stats.py) for every policy.

With `tracing.enabled`, chat and completions run in an `llm.generate` span, child of
the ingress's span (serving/observability/tracing.py).

Every chat and completion also counts as work the engine must progress on; the
routing stats report how long the engine has had work without a step, the signal on
which the router ejects a hung replica, and a stalled engine with nothing left in
flight gets a one-token probe whose completion clears it (serving/replica/engine_progress.py).

A streamed response leaves as soon as its first items are ready; later ones are batched
per interval as upstream does (serving/replica/streaming.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.openai_api_models import CompletionRequest

from serving.replica import engine_progress
from serving.replica import engine_stats, streaming
from serving.replica.engine import engine_class
from serving.replica.kv_endpoint import kv_events_config, kv_events_endpoint
from serving.config import TracingConfig
from serving.contract import (ENGINE_PROGRESS_KEY, ENGINE_STATS_KEY,
                              KV_EVENTS_REPLAY_STATS_KEY, KV_EVENTS_STATS_KEY, RANK_STATS_KEY)
from serving.observability.tracing import GenerationTracer, process_tracer_provider

logger = logging.getLogger("ray.serve")

# A prompt long enough to cross one KV block at the default block size, so the warm-up
# also exercises the prefix-cache write path; its blocks are then dropped again.
WARMUP_PROMPT = "Warm-up. " * 40

# A probe of a stalled engine: one token of a short prompt (serving/replica/engine_progress.py).
PROBE_PROMPT = "Probe."



def _replica_rank() -> int | None:
    try:
        rank = serve.get_replica_context().rank
    except Exception:  # outside a Serve replica (tests)
        return None
    value = getattr(rank, "rank", rank)
    return value if isinstance(value, int) else None


def _node_local_rank() -> int:
    """The replica's rank among the deployment's replicas on this node: its KV-event
    port offset (serving/replica/kv_endpoint.py)."""
    return int(serve.get_replica_context().rank.local_rank)


async def _watched(stream: Any) -> Any:
    """The replica's output stream, counted as pending engine work while it runs."""
    watch = engine_progress.process_watch()
    watch.begin()
    completed = False
    try:
        async for item in stream:
            yield item
        completed = True
    finally:
        watch.end(completed=completed)


def _generation_tracer(llm_config: Any) -> GenerationTracer | None:
    settings = llm_config.experimental_configs.get("cacheroute_tracing")
    if not settings:
        return None
    tracing = TracingConfig.model_validate(settings)
    try:
        replica_id = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (tests): spans still work, unlabelled
        replica_id = ""
    tracer = process_tracer_provider(tracing).get_tracer("cacheroute.replica")
    return GenerationTracer(tracer, replica_id=replica_id)


class CacheRouteServer(LLMServer):
    async def start(self) -> None:
        self._kv_events_endpoint: str | None = None
        self._kv_events_replay_endpoint: str | None = None
        if self._llm_config.experimental_configs.get("cacheroute_kv_events"):
            self._enable_kv_events()
        self._generation_tracer = _generation_tracer(self._llm_config)
        from serving.ray_private import VLLMEngine

        if self._engine_cls is VLLMEngine:  # upstream's, started lighter; not another
            self._engine_cls = engine_class()
        await super().start()
        await self._warm_up()

    def _enable_kv_events(self) -> None:
        endpoint = kv_events_endpoint(ray.util.get_node_ip_address(), _node_local_rank())
        self._llm_config.update_engine_kwargs(kv_events_config=kv_events_config(endpoint))
        self._kv_events_endpoint = endpoint.advertised
        self._kv_events_replay_endpoint = endpoint.replay

    # chat/completions: upstream's, in an `llm.generate` span when tracing is on, and
    # counted as work the engine must progress on (serving/replica/engine_progress.py).
    async def chat(self, request: Any, raw_request_info: Any = None) -> Any:
        if self._generation_tracer is None:
            stream = await super().chat(request, raw_request_info)
        else:
            stream = await self._generation_tracer.traced(super().chat, request,
                                                          raw_request_info, operation="chat")
        return _watched(stream)

    async def completions(self, request: Any, raw_request_info: Any = None) -> Any:
        if self._generation_tracer is None:
            stream = await super().completions(request, raw_request_info)
        else:
            stream = await self._generation_tracer.traced(
                super().completions, request, raw_request_info, operation="text_completion")
        return _watched(stream)

    def _batch_output_stream(self, generator: Any) -> Any:
        # Upstream's (a private method, checked against the pinned Ray by
        # tests/unit/serving/replica/test_streaming.py) holds the first batch back a
        # whole interval; ours sends what is ready at once (serving/replica/streaming.py).
        interval_ms = self._get_batch_interval_ms()
        return streaming.batched(generator, (interval_ms or 0) / 1000)

    async def record_routing_stats(self) -> dict[str, Any]:
        stats = dict(await super().record_routing_stats())
        stats[ENGINE_STATS_KEY] = engine_stats.snapshot()
        watch = engine_progress.process_watch()
        if watch.needs_probe():
            self._start_probe()
        stats[ENGINE_PROGRESS_KEY] = watch.report()
        if self._kv_events_endpoint:
            stats[KV_EVENTS_STATS_KEY] = self._kv_events_endpoint
        if self._kv_events_replay_endpoint:
            stats[KV_EVENTS_REPLAY_STATS_KEY] = self._kv_events_replay_endpoint
        rank = _replica_rank()
        if rank is not None:
            stats[RANK_STATS_KEY] = rank
        return stats

    def _start_probe(self) -> None:
        """One short generation at a time on a stalled engine with nothing else to
        run: the step it makes is what readmits the replica to the ring."""
        probe = getattr(self, "_probe", None)
        if probe is not None and not probe.done():
            return
        self._probe = asyncio.ensure_future(self._probe_engine())

    async def _probe_engine(self) -> None:
        try:
            await self._generate_once(PROBE_PROMPT, max_tokens=1)
        except Exception as err:  # a dead engine: Serve's health check replaces us
            logger.warning("cacheroute: engine probe failed: %s", err)

    async def _generate_once(self, prompt: str, *, max_tokens: int) -> None:
        request = CompletionRequest(
            model=self._llm_config.model_id,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
        )
        watch = engine_progress.process_watch()
        watch.begin()
        completed = False
        try:
            async for item in self.engine.completions(request, None):
                error = getattr(item, "error", None)
                if error is not None:
                    raise RuntimeError(f"generation failed: {error.message}")
            completed = True
        finally:
            watch.end(completed=completed)

    async def _warm_up(self) -> None:
        started = time.monotonic()
        try:
            await self._generate_once(WARMUP_PROMPT, max_tokens=2)
        except RuntimeError as err:
            raise RuntimeError(f"warm-up {err}") from None
        # Leave no warm-up blocks behind: they would count as cache hits for nobody
        # and skew the first hit-rate readings.
        await self.engine.reset_prefix_cache()
        # The engine publishes KV events after a step, so the reset's AllBlocksCleared
        # would otherwise wait for the first real request's step and reach the router
        # after it learned where that request and any routed meanwhile went: it would
        # erase those owners, and their prefixes' next requests would be decided by
        # the ring as if new. One short generation steps the engine and sends it now.
        await self._generate_once(PROBE_PROMPT, max_tokens=1)
        logger.info("cacheroute: replica warm in %.1f s", time.monotonic() - started)
