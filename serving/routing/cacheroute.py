"""Ray Serve adapter: the `cacheroute` policy as a `RequestRouter`.

Thin by design: it turns Serve's view (RunningReplica objects, a PendingRequest whose
first argument is the parsed OpenAI request, the queue-length cache) into the routing
core's plain values (replica id strings, a RouteRequest, an in-flight map), and the
core's Decision back into Serve's tiers, one replica each, from ``Decision.send_order``:

    [[chosen]]                                   a request with a cache key
    [[chosen], [next on the ring], [next], ...]  no key, or failover

Serve takes the first tier whose replica has a free slot (below
``max_ongoing_requests``), probing queue lengths as usual. A cacheable request whose
chosen replica is full waits, so the core's load bound, not Serve's cap, decides when
it spills: a fall-through to a replica without the prefix would be a full prefill,
which on slow engines turns queueing into misses (docs/simulator.md, "Routing under
overload"). It waits inside ``choose_replicas`` on that replica's FIFO queue
(serving/routing/slot_waiters.py), woken by the completion of a request there, instead of in
Serve's polling backoff, and its tokens are kept for the re-decision.

Failover (docs/failover.md): each decision is recorded under the request's Serve id
(serving/failover/attempt_log.py); a retry of that request is routed past the replicas that
failed it (``Decision.failover``: outcome FAILOVER). A replica whose routing stats
report its engine stalled past ``failover.progress_timeout_s`` is ejected from the
ring until it reports progress again (serving/replica/engine_progress.py).

Scale-up prewarm (serving/routing/prewarm.py), with ``failover.prewarm_on_scale_up``: every
routed request is counted in the policy's hot-prefix table; a replica that joins after
the first replica list becomes a prewarm job that the ingress of this process takes
(``take_prewarm_jobs``). Its prefill requests carry ids this router issued
(``issue_prewarm_id``) and go to that replica alone; it is learned as the prefixes'
owner only once a prefill completed (``on_prewarmed``).

Replication ahead of a spill, with ``routing.replicate_before_spill``: after an owner
hit that fills the last owner of its prefix with room under the load bound, the core
names the replica the prefix's next request would spill to (``spill_target``); the
prefix becomes a one-prefix prewarm job for it (reason ``spill``), taken and sent by
the same ingress task, at most one in flight per replica and prefix. The spill then
finds the prefix cached, and since the replica is learned as an owner once the prefill
completed, the next request is an owner hit there.

Hooks used (contract-tested in tests/unit/serving/routing/test_cacheroute.py): `initialize_state`,
`choose_replicas`, `update_replicas`, `on_replica_actor_died`,
`on_send_request`, `on_request_completed`, `on_new_queue_len_info`. In-flight counts
are Serve's queue-length cache, floored by this router's own count of requests sent
and not completed (serving/routing/in_flight.py: the cache forgets an entry after 10 s
without news). Each process
that holds a handle (every ingress replica) has its own instance; instances agree
because the core is deterministic and converge through the engines' KV events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, List, Optional

from ray.serve._private.common import ReplicaID
from ray.serve._private.constants import SERVE_LOGGER_NAME
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve.request_router import RequestRouter

from router import (CacheAwarePolicy, Decision, EmptyRingError, HotPrefix, Outcome,
                    PolicyConfig, RouteRequest, rank_seat)
from router import KVEventBatch
from serving.failover.attempt_log import AttemptLog, process_attempt_log
from serving.config import ServiceConfig
from serving.contract import ENGINE_PROGRESS_KEY, KV_EVENTS_STATS_KEY, RANK_STATS_KEY
from serving.replica.engine_progress import is_hung
from serving.failover.metrics import FailoverMetrics
from serving.routing.prewarm import REQUEST_ID_PREFIX, PrewarmJob
from serving.routing.prompt_tokens import PromptTokenizer
from serving.routing.metrics import RouterMetrics
from serving.routing.registry import register_router
from serving.routing.in_flight import SentRequests
from serving.routing.kv_events import KVEventSubscriber
from serving.routing.slot_waiters import SlotWaiters
from serving.observability.telemetry import ReplicaView, register_source, views_from
from serving.observability.tracing import RouteLog, process_route_log

logger = logging.getLogger(SERVE_LOGGER_NAME)


# Prompts longer than this are tokenised in a worker thread, keeping the event loop
# free; shorter ones cost less than the thread hop.
_THREAD_TOKENIZE_MIN_CHARS = 4096

# Longest single park of a request waiting for its replica's next free slot. Only a
# missed wake-up (a cancelled request, a queue length the replica corrected) waits
# this long; then Serve probes the replica and asks again.
_SLOT_WAIT_TIMEOUT_S = 2.0

# Tokenised requests kept while they wait to be routed (re-decisions reuse them);
# entries leave when the request completes, this bounds the ones that never do.
_MAX_ROUTE_CACHE = 4096

# A joining replica's ring seat is its rank, reported in its first routing stats a few
# seconds after it joins; its prewarm waits this long for it (the arc is the seat's),
# then goes ahead with the arc of its id.
_PREWARM_SEAT_WAIT_S = 15.0
# Prewarm request ids issued and not yet reported finished; the ingress reports each,
# this bounds the ones a crash mid-prewarm would leave.
_MAX_PINNED = 4096
# Replications ahead of a spill queued or in flight: a backstop against a burst of
# distinct prefixes, each of which costs a prefill.
_MAX_REPLICATING = 64


def policy_config(config: ServiceConfig) -> PolicyConfig:
    r = config.routing
    f = config.failover
    return PolicyConfig(
        block_size=config.engine.block_size,
        load_epsilon=r.load_epsilon,
        load_floor=r.load_floor,
        virtual_nodes=r.virtual_nodes,
        max_index_blocks=r.max_index_blocks,
        ownership_ttl_s=r.ownership_ttl_s,
        hash_seed=str(config.engine.hash_seed),
        session_affinity=r.session_affinity,
        # Enough hot keys that a newcomer's 1/N share still holds prewarm_prefixes of
        # them at a few dozen replicas; nothing is tracked with prewarm off.
        hot_prefix_capacity=max(256, 16 * f.prewarm_prefixes) if f.prewarm_on_scale_up else 0,
        # A replayed prefill plus its one token must fit the engine's context.
        hot_prefix_max_blocks=max(1, (config.engine.max_model_len - 1)
                                  // config.engine.block_size),
    )


def _routing_stat(replica: RunningReplica, key: str) -> Any:
    """One value a replica published in Serve's routing stats; None until it has."""
    try:
        return (replica.routing_stats or {}).get(key)
    except AttributeError:  # a replica wrapper without routing info yet
        return None


def _rank_seats(replicas: List[RunningReplica]) -> dict[str, str]:
    """Ring seats from the ranks replicas report in their routing stats; a replica
    that has not reported yet (its first stats arrive within seconds) sits at its id."""
    seats: dict[str, str] = {}
    for r in replicas:
        rank = _routing_stat(r, RANK_STATS_KEY)
        if isinstance(rank, int):
            seats[r.replica_id.unique_id] = rank_seat(rank)
    return seats


def _prompt_chars(request: Any) -> int:
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str):
        return len(prompt)
    messages = getattr(request, "messages", None) or []
    return sum(len(str(m)) for m in messages)


# Ray Serve pickles this module *by value* to ship the router class
# (RequestRouterConfig), so it must hold no module-level state that cannot be
# pickled (locks, weak maps, metric objects): such state lives in the modules
# imported below, which pickle by reference. tests/unit/serving/routing/test_cacheroute.py checks it.
class CacheRouteRequestRouter(SentRequests, RequestRouter):
    @property
    def policy(self) -> CacheAwarePolicy:
        """The routing core (read-only use from the ingress: placement, forget)."""
        return self._policy

    def initialize_state(self, config_json: str, tokenizer_path: str) -> None:
        config = ServiceConfig.model_validate_json(config_json)
        self._policy = CacheAwarePolicy(policy_config(config))
        self._metrics = RouterMetrics(config.engine.block_size)
        self._tokenizer = PromptTokenizer(tokenizer_path)
        self._subscribers: dict[str, KVEventSubscriber] = {}
        self._subscribers_lock = threading.Lock()
        # KV blocks each replica's engine evicted, from its KV events (telemetry).
        self._blocks_removed: dict[str, int] = {}
        self.last_decision: Optional[Decision] = None
        # Decisions for the ingress's trace spans (serving/observability/tracing.py); None when off.
        self._route_log: Optional[RouteLog] = (
            process_route_log() if config.tracing.enabled else None)
        self._slot_waiters = SlotWaiters()
        # Requests parked by the spill wait (``_wait_before_spill``); 0 s: spill at once.
        self._spill_waiters = SlotWaiters()
        self._spill_wait_s = config.routing.spill_wait_s
        self._routes: OrderedDict[str, RouteRequest] = OrderedDict()
        # Failover (serving/failover/failover.py): where each request went, what its retry
        # must avoid, and which replicas are out of the ring for lack of progress.
        self._attempts: AttemptLog = process_attempt_log()
        self._progress_timeout_s = config.failover.progress_timeout_s
        self._eject_hung = config.failover.enabled
        self._failover_metrics = FailoverMetrics()
        # Scale-up prewarm (serving/routing/prewarm.py); 0 prefixes: off.
        self._prewarm_prefixes = (config.failover.prewarm_prefixes
                                  if config.failover.prewarm_on_scale_up else 0)
        self._prewarm_lock = threading.Lock()
        # Members at the last replica list; None before the first non-empty one.
        self._known: frozenset[str] | None = None
        # Joined replica id -> when it joined (monotonic), until the ingress takes it.
        self._joined: dict[str, float] = {}
        self._seated: frozenset[str] = frozenset()
        # Issued prewarm request id -> the one replica it may go to.
        self._pinned: OrderedDict[str, str] = OrderedDict()
        # Replication ahead of a spill: jobs not yet taken, and (replica, salt, tokens)
        # of those queued or in flight, so a prefix is sent to a replica once at a time.
        self._replicate = config.routing.replicate_before_spill
        self._max_prefix_blocks = max(1, (config.engine.max_model_len - 1)
                                      // config.engine.block_size)
        self._block_size = config.engine.block_size
        self._replications: list[PrewarmJob] = []
        self._replicating: set[tuple[str, str | None, tuple[int, ...]]] = set()
        register_source(self)
        register_router(self._deployment_id.name, self)

    # --- membership -------------------------------------------------------------

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        gone = set(self._policy.replicas) - {r.replica_id.unique_id for r in replicas}
        super().update_replicas(replicas)
        ids = [r.replica_id.unique_id for r in replicas]
        seats = _rank_seats(replicas)
        self._policy.set_replicas(ids, seats=seats)
        if self._prewarm_prefixes:
            self._note_joined(ids, frozenset(seats))
        for rid in gone:  # their waiters re-decide among the replicas left
            self._wake_all(rid)
        if self._eject_hung:
            self._follow_progress(replicas)
        self._metrics.on_replicas(self._policy.replicas)
        self._sync_subscribers(replicas)

    def _follow_progress(self, replicas: List[RunningReplica]) -> None:
        """Eject a replica whose engine reports no progress (serving/replica/engine_progress.py)
        and readmit it once it progresses again; Serve re-sends the replica list
        whenever a replica's routing stats change."""
        for replica in replicas:
            rid = replica.replica_id.unique_id
            report = _routing_stat(replica, ENGINE_PROGRESS_KEY)
            if is_hung(report, self._progress_timeout_s):
                if self._policy.eject(rid):
                    logger.warning("cacheroute: replica %s made no progress for %.1f s; "
                                   "out of the ring", rid, report["stalled_s"])
                    self._failover_metrics.on_ejection("ejected")
                self._wake_all(rid)  # no completion will free a slot there
            elif rid in self._policy.ejected and self._policy.readmit(rid):
                logger.info("cacheroute: replica %s progresses again; back on the ring", rid)
                self._failover_metrics.on_ejection("readmitted")
        self._publish_ejected()

    def _publish_ejected(self) -> None:
        """The replicas out of the ring, to the failover's attempt log and metrics."""
        self._attempts.set_ejected(self._policy.ejected)
        self._failover_metrics.on_ejected(len(self._policy.ejected))

    # --- scale-up prewarm (serving/routing/prewarm.py) ------------------------------------

    def _note_joined(self, ids: list[str], seated: frozenset[str]) -> None:
        """Queue every replica new since the last list, after the first non-empty one
        (the deployment's own start is not a scale-up)."""
        current = frozenset(ids)
        now = time.monotonic()
        with self._prewarm_lock:
            if self._known is not None:
                for rid in current - self._known:
                    self._joined.setdefault(rid, now)
            if current:
                self._known = current
            for rid in [r for r in self._joined if r not in current]:
                del self._joined[rid]  # left before its prewarm began
            self._seated = seated

    def take_prewarm_jobs(self) -> list[PrewarmJob]:
        """The joined replicas ready to prewarm (seated on the ring, or waited long
        enough), each with the hottest prefixes of its arc; handed out once."""
        if not self._joined and not self._replications:
            return []
        now = time.monotonic()
        with self._prewarm_lock:
            ready = [rid for rid, since in self._joined.items()
                     if rid in self._seated or now - since >= _PREWARM_SEAT_WAIT_S]
            for rid in ready:
                del self._joined[rid]
            replications, self._replications = self._replications, []
        # A LoRA adapter's prefix would need its adapter named as the model: not replayed.
        return [PrewarmJob(replica_id=rid, prefixes=tuple(
                    p for p in self._policy.hot_prefixes_of(rid, self._prewarm_prefixes)
                    if p.lora_name is None))
                for rid in ready if rid in self._policy.replicas] + replications

    def _maybe_replicate(self, request: RouteRequest, decision: Decision,
                         in_flight: dict[str, int]) -> None:
        """Queue the prefix of an owner hit that filled its last owner with room for the
        replica its next request would spill to (module docstring)."""
        if (decision.outcome is not Outcome.OWNER_HIT or request.lora_name is not None
                or not request.token_ids):
            return
        target = self._policy.spill_target(request, decision, in_flight)
        if target is None:
            return
        replica_id, blocks = target
        tokens = tuple(request.token_ids[:min(blocks, self._max_prefix_blocks) * self._block_size])
        key = (replica_id, request.cache_salt, tokens)
        with self._prewarm_lock:
            if key in self._replicating or len(self._replicating) >= _MAX_REPLICATING:
                return
            self._replicating.add(key)
            self._replications.append(PrewarmJob(replica_id=replica_id, reason="spill", prefixes=(
                HotPrefix(ring_key=0, token_ids=tokens, blocks=len(tokens) // self._block_size,
                          cache_salt=request.cache_salt, lora_name=None, lora_path=None,
                          heat=0.0),)))

    def issue_prewarm_id(self, replica_id: str) -> str:
        """A request id that ``choose_replicas`` sends to ``replica_id`` alone."""
        request_id = f"{REQUEST_ID_PREFIX}{replica_id}-{uuid.uuid4().hex}"
        with self._prewarm_lock:
            self._pinned[request_id] = replica_id
            while len(self._pinned) > _MAX_PINNED:
                self._pinned.popitem(last=False)
        return request_id

    def on_prewarmed(self, request_id: str, prefix: HotPrefix, ok: bool) -> None:
        """A prewarm finished: on success its replica now holds ``prefix`` and becomes
        an owner (never before: until then the prefix is not routed to it as owner)."""
        with self._prewarm_lock:
            replica_id = self._pinned.pop(request_id, None)
            self._replicating.discard((replica_id or "", prefix.cache_salt, prefix.token_ids))
        if ok and replica_id is not None:
            self._policy.learn(replica_id, RouteRequest(
                token_ids=prefix.token_ids, cache_salt=prefix.cache_salt,
                lora_name=prefix.lora_name, lora_path=prefix.lora_path))

    def _pinned_to(self, pending_request: PendingRequest | None) -> str | None:
        """The replica a prewarm request was issued for; None for any other request
        (an id a client made up is not in the issued set)."""
        if not self._pinned or pending_request is None or not pending_request.args:
            return None
        request_id = getattr(pending_request.args[0], "request_id", None)
        return self._pinned.get(request_id) if isinstance(request_id, str) else None

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._policy.on_replica_removed(replica_id.unique_id)
        self._publish_ejected()
        self._metrics.on_replicas(self._policy.replicas)
        self._stop_subscriber(replica_id.unique_id)
        self._wake_all(replica_id.unique_id)

    # --- slots --------------------------------------------------------------------

    def _wake_all(self, rid: str) -> None:
        """The replica left the ring: everything parked for it decides again."""
        self._slot_waiters.wake_all(rid)
        self._spill_waiters.wake_all(rid)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self._routes.pop(internal_request_id, None)
        # Serve decrements the queue-length cache in a callback queued after this
        # one, so the woken request re-decides with the slot already counted free.
        # One wake per completion: a request parked for this very replica first, else
        # one parked before a spill (both deciding on one freed slot would overfill it).
        if not self._slot_waiters.wake_one(replica_id.unique_id):
            self._spill_waiters.wake_one(replica_id.unique_id)

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        super().on_new_queue_len_info(replica_id, num_ongoing_requests)
        replica = self.curr_replicas.get(replica_id)
        if replica is None:
            return
        for _ in range(max(0, replica.max_ongoing_requests - num_ongoing_requests)):
            if not self._slot_waiters.wake_one(replica_id.unique_id):
                break

    def _is_full(self, replica: RunningReplica) -> bool:
        return self.in_flight(replica.replica_id) >= replica.max_ongoing_requests

    def _sync_subscribers(self, replicas: List[RunningReplica]) -> None:
        live = {r.replica_id.unique_id for r in replicas}
        for rid in list(self._subscribers):
            if rid not in live:
                self._stop_subscriber(rid)
        for r in replicas:
            self._maybe_subscribe(r)

    def _maybe_subscribe(self, replica: RunningReplica) -> None:
        rid = replica.replica_id.unique_id
        if rid in self._subscribers:
            return
        endpoint = _routing_stat(replica, KV_EVENTS_STATS_KEY)
        if not endpoint:
            return
        with self._subscribers_lock:
            if rid in self._subscribers:
                return
            sub = KVEventSubscriber(endpoint, lambda batch, rid=rid: self._on_kv_events(rid, batch))
            sub.start()
            self._subscribers[rid] = sub
        logger.info("cacheroute: following KV events of replica %s at %s", rid, endpoint)

    def _on_kv_events(self, rid: str, batch: KVEventBatch) -> None:
        applied = self._policy.on_kv_events(rid, batch)
        if applied.removed_blocks:
            self._blocks_removed[rid] = self._blocks_removed.get(rid, 0) + applied.removed_blocks
        self._metrics.on_kv_events(applied)

    def replica_views(self) -> list[ReplicaView]:
        """Per-replica telemetry for the app's /metrics (serving/observability/telemetry.py)."""
        return views_from(list(self.curr_replicas.values()), self.in_flight,
                          owned=self._policy.owned_blocks(),
                          removed=dict(self._blocks_removed))

    def _stop_subscriber(self, rid: str) -> None:
        with self._subscribers_lock:
            sub = self._subscribers.pop(rid, None)
        if sub is not None:
            sub.stop()

    # --- routing ----------------------------------------------------------------

    async def route_request(self, pending_request: Optional[PendingRequest]) -> RouteRequest:
        if pending_request is None or not pending_request.args:
            return RouteRequest()
        key = pending_request.metadata.internal_request_id
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        request = await self._tokenize(pending_request)
        self._routes[key] = request
        if len(self._routes) > _MAX_ROUTE_CACHE:
            self._routes.popitem(last=False)
        return request

    async def _tokenize(self, pending_request: PendingRequest) -> RouteRequest:
        body = pending_request.args[0]
        if _prompt_chars(body) >= _THREAD_TOKENIZE_MIN_CHARS:
            token_ids = await asyncio.to_thread(self._tokenizer.packed_ids, body)
        else:
            token_ids = self._tokenizer.packed_ids(body)
        session = pending_request.metadata.session_id or getattr(body, "user", None) or None
        return RouteRequest(
            token_ids=token_ids,
            cache_salt=getattr(body, "cache_salt", None),
            session_id=session,
        )

    def _avoid_failed(self, decision: Decision, request_key: str) -> Decision:
        """A retry (serving/failover/failover.py) goes to the next replica along the ring that has
        not failed this request; if every replica failed it, the usual choice."""
        avoided = self._attempts.avoided(request_key) if request_key else frozenset()
        if decision.replica_id not in avoided:
            return decision
        try:
            return decision.failover(avoided)
        except EmptyRingError:
            return decision

    async def _wait_before_spill(
        self, request: RouteRequest, decision: Decision, by_id: dict[str, RunningReplica],
        in_flight: dict[str, int],
    ) -> tuple[Decision, dict[str, RunningReplica], dict[str, int]]:
        """The spill wait: park until a request completes on one of the owners the
        bound turned this request away from, or ``routing.spill_wait_s`` passes, then
        decide again (a spill is held again for the caller to commit). One wait per
        request: what it decides then, it takes.

        Delay scheduling (Zaharia et al., EuroSys 2010): on a short burst an owner
        frees a slot within one request's service time, while the spill's prefill
        (seconds for 1k tokens on a CPU engine) also slows every request batched with
        it. The wait ends at the first completion, so it follows the engines' speed.
        Each completion wakes one parked request (``on_request_completed``), so a
        sustained overload still spills, and the bound holds throughout: a parked
        request is on no replica.

        A request whose every owner already has a request waiting for it spills at
        once (``busy``): the next completion there goes to that earlier request, so
        this one would most likely time out and spill late, having waited for
        nothing."""
        owners = self._policy.spill_owners(request).intersection(by_id)
        if not owners:
            return decision, by_id, in_flight
        if all(self._spill_waiters.waiting(rid) for rid in owners):
            self._metrics.on_spill_wait("busy")
            return decision, by_id, in_flight
        woken = await self._spill_waiters.wait_any(owners, timeout_s=self._spill_wait_s)
        by_id = {rid: r for rid, r in by_id.items() if r.replica_id in self.curr_replicas}
        if not by_id:
            return decision, by_id, in_flight
        in_flight = self._in_flight(list(by_id.values()))
        again = self._policy.select(request, in_flight, hold_spill=True)
        self._metrics.on_spill_wait(
            "owner_hit" if again.outcome is Outcome.OWNER_HIT
            else ("spill" if woken else "timeout"))
        return again, by_id, in_flight

    def _in_flight(self, candidates: List[RunningReplica]) -> dict[str, int]:
        return {r.replica_id.unique_id: self.in_flight(r.replica_id) for r in candidates}

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        pinned = self._pinned_to(pending_request)
        if pinned is not None:
            # A prewarm: that replica or none (Serve asks again until it is a
            # candidate; the ingress's timeout bounds the wait). Not a routing decision.
            return [[r] for r in candidate_replicas if r.replica_id.unique_id == pinned]
        for r in candidate_replicas:
            self._maybe_subscribe(r)
        started = time.perf_counter()
        try:
            request = await self.route_request(pending_request)
        except Exception:  # a request the tokenizer rejects still deserves an answer
            logger.exception("cacheroute: could not tokenize; routing without a prefix key")
            request = RouteRequest()
        tokenized = time.perf_counter()
        request_key = pending_request.metadata.internal_request_id if pending_request else ""
        in_flight = self._in_flight(candidate_replicas)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        # A retry (serving/failover/failover.py) goes on at once: it already waited for a failure.
        wait = self._spill_wait_s > 0 and not (
            request_key and self._attempts.avoided(request_key))
        decision = self._policy.select(request, in_flight, hold_spill=wait)
        decide_s = time.perf_counter() - tokenized
        if wait and decision.outcome is Outcome.SPILL:
            decision, by_id, in_flight = await self._wait_before_spill(
                request, decision, by_id, in_flight)
            if not by_id:
                return []
            if decision.outcome is Outcome.SPILL:
                self._policy.commit(request, decision)
        decision = self._avoid_failed(decision, request_key)
        # A keyed request whose replica is full parks until a slot there frees, then
        # re-decides with the new loads (the bound may now allow a spill). Metrics and
        # traces record the decision that is finally offered.
        while (len(decision.send_order) == 1 and decision.replica_id in by_id
               and self._is_full(by_id[decision.replica_id])):
            if not await self._slot_waiters.wait(decision.replica_id,
                                                 timeout_s=_SLOT_WAIT_TIMEOUT_S):
                break
            by_id = {rid: r for rid, r in by_id.items() if r.replica_id in self.curr_replicas}
            if not by_id:
                return []
            in_flight = self._in_flight(list(by_id.values()))
            decision = self._avoid_failed(self._policy.select(request, in_flight), request_key)
        if self._replicate:
            self._maybe_replicate(request, decision, in_flight)
        self._metrics.on_decision(decision, len(request.token_ids or ()),
                                  tokenize_s=tokenized - started, decide_s=decide_s)
        self.last_decision = decision
        self._attempts.record(request_key, decision.replica_id)
        if self._route_log is not None and pending_request is not None:
            self._route_log.record(pending_request.metadata.internal_request_id, decision,
                                   prompt_tokens=len(request.token_ids or ()),
                                   elapsed_s=time.perf_counter() - started)
        tiers = [[by_id[rid]] for rid in decision.send_order if rid in by_id]
        # The chosen id always comes from these candidates; ranked is the safe fallback.
        return tiers or [[by_id[rid]] for rid in decision.ranked if rid in by_id]

