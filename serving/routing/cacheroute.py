"""Ray Serve adapter: the `cacheroute` policy as a `RequestRouter`, translation only.

It turns Serve's view (RunningReplica objects, a PendingRequest whose first argument
is the parsed OpenAI request, the queue-length cache) into the routing core's plain
values (replica id strings, a RouteRequest, Loads), and the core's Decision back into
Serve's tiers, one replica each, from ``Decision.send_order``:

    [[chosen]]                                   a request with a cache key
    [[chosen], [next on the ring], [next], ...]  no key, or failover

Serve takes the first tier whose replica has a free slot (below
``max_ongoing_requests``). A cacheable request whose chosen replica is full waits, so
the core's load bound, not Serve's cap, decides when it spills: a fall-through to a
replica without the prefix would be a full prefill, which on slow engines turns
queueing into misses (docs/benchmarks/simulator.md). With ``routing.spill_wait_s``
a spill first waits for an owner of its prefix to free a slot. Both waits are the
core's one protocol (router/admission.py), parked on this event loop by
serving/routing/parking.py and woken by Serve's completion hooks; tokens are kept
for the re-decision.

Each concern is its own module: prompt tokens once per request (route_requests.py);
hung replicas out of the ring by their routing stats (hang_ejection.py); a retry
routed past the replicas that failed it, named by the failover's attempt log
(serving/failover/attempts.py, docs/operations/failover.md); the engines' KV events
(kv_events.py); scale-up prewarm and replication ahead of a spill (prewarm_jobs.py,
taken and sent by the ingress, prewarm.py); metrics (metrics.py), trace spans
(serving/observability/tracing.py) and the predicted cached tokens the ingress
compares with the engine's (serving/observability/route_accuracy.py).

Hooks used (contract-tested in tests/unit/serving/routing/test_cacheroute.py):
`initialize_state`, `choose_replicas`, `update_replicas`, `on_replica_actor_died`,
`on_send_request`, `on_request_completed`, `on_new_queue_len_info`. In-flight counts
are Serve's queue-length cache, floored by this router's own count of requests sent
and not completed (serving/routing/in_flight.py: the cache forgets an entry after
10 s without news). Each process that holds a handle (every ingress replica) has its
own instance; instances agree because the core is deterministic and converge through
the engines' KV events.
"""

from __future__ import annotations

import time
from typing import List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from router import (SLOT_WAIT_S, Admission, CacheAwarePolicy, Decision, HotPrefix, Loads,
                    PolicyConfig)
from serving.config import ServiceConfig
from serving.observability.route_log import RouteLog
from serving.observability.telemetry import ReplicaView, views_from
from serving.routing.hang_ejection import HangEjection
from serving.routing.in_flight import SentRequests
from serving.routing.kv_events import KVEventFollower
from serving.routing.metrics import RouterMetrics
from serving.routing.parking import Parking
from serving.routing.prewarm import PrewarmJob
from serving.routing.prewarm_jobs import PrewarmJobs
from serving.routing.registry import local_routers
from serving.routing.replica_stats import kv_event_sources, rank_seats
from serving.routing.route_requests import RouteRequests


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


# Ray Serve pickles this module *by value* to ship the router class
# (RequestRouterConfig), so it must hold no module-level state that cannot be
# pickled (locks, weak maps, metric objects): such state lives in the modules
# imported above, which pickle by reference. tests/unit/serving/routing/test_cacheroute.py checks it.
class CacheRouteRequestRouter(SentRequests, RequestRouter):
    @property
    def policy(self) -> CacheAwarePolicy:
        """The routing core (read-only use from the ingress: placement, forget)."""
        return self._policy

    def initialize_state(self, config_json: str, tokenizer_path: str) -> None:
        config = ServiceConfig.model_validate_json(config_json)
        self._policy = CacheAwarePolicy(policy_config(config))
        self._metrics = RouterMetrics(config.engine.block_size)
        self._routes = RouteRequests(tokenizer_path)
        # 0 s spill wait: a spill goes at once (router/admission.py).
        self._admission = Admission(self._policy, spill_wait_s=config.routing.spill_wait_s,
                                    slot_wait_s=SLOT_WAIT_S)
        self._parking = Parking(self._admission,
                                on_spill_wait=lambda result: self._metrics.on_spill_wait(
                                    result.value))
        self._kv_events = KVEventFollower(self._policy, self._metrics.on_kv_events)
        # Failover (serving/failover/failover.py): where each request went, what its
        # retry must avoid, and which replicas are out of the ring for lack of progress.
        # The one state this router shares with the ingress of its process
        # (serving/routing/registry.py).
        routers = local_routers()
        self._attempts = routers.attempts
        self._hangs = HangEjection(self._policy, self._attempts,
                                   progress_timeout_s=config.failover.progress_timeout_s)
        self._eject_hung = config.failover.enabled
        f, engine = config.failover, config.engine
        self._prewarm = PrewarmJobs(
            self._policy, prewarm_prefixes=f.prewarm_prefixes if f.prewarm_on_scale_up else 0,
            replicate=config.routing.replicate_before_spill, block_size=engine.block_size,
            max_prefix_blocks=max(1, (engine.max_model_len - 1) // engine.block_size))
        self.last_decision: Optional[Decision] = None
        # Decisions for the ingress's trace spans (serving/observability/tracing.py); None when off.
        self._route_log: Optional[RouteLog] = (
            routers.route_log if config.tracing.enabled else None)
        # What each decision predicts, against what the engine delivers (always on).
        self._predictions = routers.predictions
        self._block_size = config.engine.block_size
        routers.register_source(self)
        routers.register_router(self._deployment_id.name, self)

    # --- Serve's hooks: membership and slots --------------------------------------

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        ids = [r.replica_id.unique_id for r in replicas]
        gone = self._policy.replicas - set(ids)
        super().update_replicas(replicas)
        seats = rank_seats(replicas)
        self._policy.set_replicas(ids, seats=seats)
        self._prewarm.note_joined(ids, frozenset(seats))
        for rid in gone:  # their waiters decide again among the replicas left
            self._parking.on_replica_gone(rid)
        if self._eject_hung:
            for rid in self._hangs.follow(replicas):  # no completion will free a slot there
                self._parking.on_replica_gone(rid)
        self._metrics.on_replicas(self._policy.replicas)
        self._kv_events.sync(kv_event_sources(replicas))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        rid = replica_id.unique_id
        self._policy.on_replica_removed(rid)
        self._hangs.publish()
        self._metrics.on_replicas(self._policy.replicas)
        self._kv_events.stop(rid)
        self._parking.on_replica_gone(rid)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self._routes.forget(internal_request_id)
        # Serve decrements the queue-length cache in a callback queued after this
        # one, so the woken request decides again with the slot already counted free.
        self._parking.on_completed(replica_id.unique_id)

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        super().on_new_queue_len_info(replica_id, num_ongoing_requests)
        replica = self.curr_replicas.get(replica_id)
        if replica is not None:
            self._parking.on_free_slots(replica_id.unique_id,
                                        replica.max_ongoing_requests - num_ongoing_requests)

    # --- for the ingress: prewarm jobs (serving/routing/prewarm.py), telemetry -------

    def take_prewarm_jobs(self) -> list[PrewarmJob]:
        return self._prewarm.take()

    def issue_prewarm_id(self, replica_id: str) -> str:
        return self._prewarm.issue_id(replica_id)

    def on_prewarmed(self, request_id: str, prefix: HotPrefix, ok: bool) -> None:
        self._prewarm.on_prewarmed(request_id, prefix, ok)

    def replica_views(self) -> list[ReplicaView]:
        """Per-replica telemetry for the app's /metrics (serving/observability/telemetry.py)."""
        return views_from(list(self.curr_replicas.values()), self.in_flight,
                          owned=self._policy.owned_blocks(),
                          removed=self._kv_events.blocks_removed())

    # --- routing ----------------------------------------------------------------

    def _loads(self, by_id: dict[str, RunningReplica]) -> Loads:
        return Loads(in_flight={rid: self.in_flight(r.replica_id) for rid, r in by_id.items()},
                     max_in_flight={rid: r.max_ongoing_requests for rid, r in by_id.items()},
                     candidates=frozenset(by_id))

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        pinned = self._prewarm.pinned_to(pending_request.args[0] if pending_request
                                         and pending_request.args else None)
        if pinned is not None:
            # A prewarm: that replica or none (Serve asks again until it is a
            # candidate; the ingress's timeout bounds the wait). Not a routing decision.
            return [[r] for r in candidate_replicas if r.replica_id.unique_id == pinned]
        for rid, source in kv_event_sources(candidate_replicas):
            self._kv_events.follow(rid, source)
        started = time.perf_counter()
        request = await self._routes.of(pending_request)
        tokenized = time.perf_counter()
        key = pending_request.metadata.internal_request_id if pending_request else ""
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads: Optional[Loads] = self._loads(by_id)
        # A retry (serving/failover/failover.py) names the replicas that failed it.
        step = self._admission.admit(request, loads, avoid=self._attempts.avoided(key)
                                     if key else frozenset())
        decide_s = time.perf_counter() - tokenized

        def loads_now() -> Optional[Loads]:
            """After a wait: the candidates still on Serve's list, with their loads."""
            nonlocal by_id, loads
            by_id = {rid: r for rid, r in by_id.items() if r.replica_id in self.curr_replicas}
            loads = self._loads(by_id) if by_id else None
            return loads

        sent = await self._parking.until_sent(step, loads_now)
        if sent is None or loads is None:
            return []
        # Metrics and traces record the decision that is finally offered.
        decision = sent.decision
        self._prewarm.maybe_replicate(request, decision, dict(loads.in_flight))
        self._metrics.on_decision(decision, len(request.token_ids or ()),
                                  tokenize_s=tokenized - started, decide_s=decide_s)
        self.last_decision = decision
        self._attempts.record(key, decision.replica_id)
        self._predictions.record(key, decision, prompt_tokens=len(request.token_ids or ()),
                                 block_size=self._block_size)
        if self._route_log is not None and pending_request is not None:
            self._route_log.record(key, decision, prompt_tokens=len(request.token_ids or ()),
                                   elapsed_s=time.perf_counter() - started)
        tiers = [[by_id[rid]] for rid in decision.send_order if rid in by_id]
        # The chosen id always comes from these candidates; ranked is the safe fallback.
        return tiers or [[by_id[rid]] for rid in decision.ranked if rid in by_id]
