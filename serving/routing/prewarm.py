"""Scale-up prewarm: a joining replica is sent the hottest prefixes of its arc first.

Why: ownership wins over the ring (router/policy.py), so when a replica joins, the
hot prefixes of the arc it takes over keep going to their old owners, and it gets
only new keys and cold spills; the old owners stay as loaded as before. Prefilling
those prefixes on it first makes it an owner of them, and the policy then splits their
traffic onto it (least loaded owner, ties to the ring home: the newcomer) with cache
hits instead of full prefills, so the hit rate dips less.

How, with ``failover.prewarm_on_scale_up`` on:

1. The router (serving/routing/cacheroute.py) counts every routed request in the policy's
   hot-prefix table (router/hot_prefixes.py) and notes each replica that joins after
   its first replica list (a scale-up, or a replacement of a dead replica); that
   bookkeeping is serving/routing/prewarm_jobs.py.
2. This module's ``Prewarmer`` runs in the ingress, the process that holds both the
   deployment handle and that router (serving/routing/registry.py). Every
   ``POLL_INTERVAL_S`` it takes the joined replicas from the router
   (``take_prewarm_jobs``: the ``failover.prewarm_prefixes`` hottest prefixes whose
   ring home is now the replica), and sends each prefix as a prefill-only completion
   (``prompt`` = its token ids, ``max_tokens=1``), at most ``CONCURRENCY`` at a time.
3. Each such request carries a request id the router issued for that replica
   (``issue_prewarm_id``); the router sends it to exactly that replica, and records
   no decision, no metric and no hot-prefix count for it.
4. Only when the prefill completed does the router learn the replica as an owner of
   the prefix (``on_prewarmed``): before that, the prefix is never routed to it as
   its owner. A failed or timed-out prewarm teaches nothing.

Costs: per routed request, one hot-table observation (O(1) amortised); per joining
replica, ``prewarm_prefixes`` prefills of at most ``max_model_len - 1`` tokens each,
sent while it also takes its share of new traffic.
Metrics (``cacheroute_prewarm_*``) are on the app's ``/metrics``.

The same path carries *replications ahead of a spill* (``routing.replicate_before_spill``):
when a request fills the last owner of its prefix with room under the load bound, the
router (``CacheAwarePolicy.spill_target``) names the replica the prefix's next request
would spill to, and queues a job of reason ``spill`` with that one prefix. It is sent at
once (jobs run side by side, not one after another) and counted in
``cacheroute_replications_total`` instead of the scale-up metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol


from router import HotPrefix
from serving.routing.metrics import PrewarmMetrics

logger = logging.getLogger("ray.serve")

# How often the ingress asks its router for jobs: a replication ahead of a spill must
# start well before the prefix's next request (seconds apart for a hot tenant), and an
# idle poll is two list reads.
POLL_INTERVAL_S = 0.2
# Prefills in flight per ingress: enough to finish a few dozen prefixes in seconds,
# few enough that the newcomer still has slots for the traffic it already gets.
CONCURRENCY = 2
# A prefill of a few thousand tokens on a loaded CPU replica takes seconds; this only
# stops a prewarm from waiting forever on a replica that left or hangs.
PREWARM_TIMEOUT_S = 120.0
# Request ids of prewarms start with this (logs, the engine's request list).
REQUEST_ID_PREFIX = "cacheroute-prewarm-"

# Seconds a joining replica's prewarm took, from its first prefill sent to its last done.


@dataclass(frozen=True, kw_only=True)
class PrewarmJob:
    """A replica that joined, and the hot prefixes of the arc it took over."""

    replica_id: str
    prefixes: tuple[HotPrefix, ...]
    # "scale_up": a joining replica's arc; "spill": one prefix replicated ahead of a spill.
    reason: str = "scale_up"


class PrewarmRouter(Protocol):
    """What the prewarmer needs of the router (``CacheRouteRequestRouter``)."""

    def take_prewarm_jobs(self) -> list[PrewarmJob]:
        """Joined replicas ready to prewarm; each is handed out once."""

    def issue_prewarm_id(self, replica_id: str) -> str:
        """A request id the router sends to ``replica_id`` and nowhere else."""

    def on_prewarmed(self, request_id: str, prefix: HotPrefix, ok: bool) -> None:
        """The prewarm with that id finished; on success the replica owns ``prefix``."""


def prefill_body(model: str, prefix: HotPrefix, request_id: str) -> dict[str, Any]:
    """The completion request that prefills ``prefix``: its token ids as the prompt
    (used as is, no re-tokenisation), one greedy token, the tenant's cache salt."""
    body: dict[str, Any] = {"model": model, "prompt": list(prefix.token_ids), "max_tokens": 1,
                            "temperature": 0.0, "stream": False, "request_id": request_id}
    if prefix.cache_salt is not None:
        body["cache_salt"] = prefix.cache_salt
    return body


def reply_ok(reply: Any) -> bool:
    """Whether the first item of a completion's reply stream is a success (upstream
    sends errors as an ``ErrorResponse`` item, not an exception)."""
    if isinstance(reply, list):  # a batch of chunks
        reply = reply[0] if reply else None
    return reply is not None and getattr(reply, "error", None) is None


class Prewarmer:
    """The ingress's background task that carries out the router's prewarm jobs.

    ``send`` sends one completion request body (a dict) to the deployment and yields its
    reply items, as the ingress sends client traffic, minus failover: a prewarm is
    pinned to one replica, and retrying it elsewhere would teach the router nothing.
    ``router`` returns this process's router of the deployment (None until Serve made it).
    """

    def __init__(self, *, model: str,
                 router: Callable[[], PrewarmRouter | None],
                 send: Callable[[dict[str, Any]], AsyncIterator[Any]],
                 metrics: PrewarmMetrics, concurrency: int = CONCURRENCY,
                 timeout_s: float = PREWARM_TIMEOUT_S,
                 poll_interval_s: float = POLL_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._router = router
        self._send = send
        self._metrics = metrics
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start the polling loop on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        # Each job is its own task, so the poll goes on while a joining replica's
        # prewarm takes seconds: a replication queued meanwhile starts at the next poll.
        running: set[asyncio.Task[int]] = set()
        while True:
            try:
                for task in self._start_jobs():
                    running.add(task)
                    task.add_done_callback(self._finished)
                    task.add_done_callback(running.discard)
            except Exception:  # a failure must not end the loop
                logger.exception("cacheroute: prewarm failed")
            await asyncio.sleep(self._poll_interval_s)

    @staticmethod
    def _finished(task: asyncio.Task[int]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("cacheroute: prewarm failed", exc_info=task.exception())

    def _start_jobs(self) -> list[asyncio.Task[int]]:
        """A task per job the router has now, side by side: a replication must not
        wait behind a joining replica's prewarm."""
        router = self._router()
        if router is None:
            return []
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._prewarm(router, job))
                for job in router.take_prewarm_jobs()]

    async def run_once(self) -> int:
        """Carry out the jobs the router has now; returns the prefixes prewarmed."""
        return sum(await asyncio.gather(*self._start_jobs()))

    async def _prewarm(self, router: PrewarmRouter, job: PrewarmJob) -> int:
        if not job.prefixes:
            return 0
        if job.reason == "spill":
            return int(await self._prefill(router, job.replica_id, job.prefixes[0],
                                           spill=True))
        self._metrics.replicas.inc()
        started = self._clock()
        gate = asyncio.Semaphore(self._concurrency)

        async def one(prefix: HotPrefix) -> bool:
            async with gate:
                return await self._prefill(router, job.replica_id, prefix)

        results = await asyncio.gather(*(one(p) for p in job.prefixes))
        self._metrics.seconds.observe(self._clock() - started)
        succeeded = sum(results)
        logger.info("cacheroute: prewarmed %d of %d hot prefixes on joining replica %s",
                    succeeded, len(results), job.replica_id)
        return succeeded

    async def _prefill(self, router: PrewarmRouter, replica_id: str,
                       prefix: HotPrefix, *, spill: bool = False) -> bool:
        request_id = router.issue_prewarm_id(replica_id)
        if spill:
            self._metrics.replications.labels(result="sent").inc()
        else:
            self._metrics.sent.inc()
        ok = False
        try:
            reply = await asyncio.wait_for(
                self._first_reply(prefill_body(self._model, prefix, request_id)),
                self._timeout_s)
            ok = reply_ok(reply)
        except asyncio.TimeoutError:
            logger.warning("cacheroute: prewarm of replica %s took over %g s; skipped",
                           replica_id, self._timeout_s)
        except Exception as err:  # noqa: BLE001 - the replica left or failed: it stays cold
            logger.warning("cacheroute: prewarm of replica %s failed: %s", replica_id, err)
        finally:
            router.on_prewarmed(request_id, prefix, ok)
        result = "succeeded" if ok else "failed"
        (self._metrics.replications if spill else self._metrics.results).labels(
            result=result).inc()
        return ok

    async def _first_reply(self, body: dict[str, Any]) -> Any:
        replies = self._send(body)
        try:
            return await replies.__anext__()
        finally:
            aclose = getattr(replies, "aclose", None)
            if aclose is not None:
                await aclose()
