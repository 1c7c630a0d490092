"""The router's side of scale-up prewarm and of replication ahead of a spill: the jobs.

serving/routing/prewarm.py describes both and holds the ingress's ``Prewarmer``, which
carries the jobs out; this module is the bookkeeping the router keeps for it:

* replicas that joined after the first replica list, until the ingress takes them
  (``note_joined``, ``take``); a joiner waits for its ring seat (its rank, reported in
  its first routing stats a few seconds after it joins) at most ``SEAT_WAIT_S``;
* prefixes to replicate ahead of a spill (``maybe_replicate``): after an owner hit that
  fills the last owner of its prefix with room under the load bound, the replica the
  prefix's next request would spill to (``PrefixReads.spill_target``) gets a one-prefix
  job, at most one in flight per replica and prefix;
* the request ids issued for prewarm prefills (``issue_id``), each pinned to its one
  replica (``pinned_to``), and what a finished prefill teaches (``on_prewarmed``: the
  replica owns the prefix only once the prefill completed).

Serve's hooks run on the router's event loop while the ingress takes jobs from its
own; one lock guards the tables. Costs: O(1) per request (the pin lookup), O(joined)
per take.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from router import Decision, FleetEvents, HotPrefix, Outcome, PrefixReads, RouteRequest
from serving.routing.prewarm import REQUEST_ID_PREFIX, PrewarmJob

# A joining replica's ring seat is its rank, reported in its first routing stats a few
# seconds after it joins; its prewarm waits this long for it (the arc is the seat's),
# then goes ahead with the arc of its id.
SEAT_WAIT_S = 15.0
# Prewarm request ids issued and not yet reported finished; the ingress reports each,
# this bounds the ones a crash mid-prewarm would leave.
_MAX_PINNED = 4096
# Replications ahead of a spill queued or in flight: a backstop against a burst of
# distinct prefixes, each of which costs a prefill.
_MAX_REPLICATING = 64


class PrefixPolicy(FleetEvents, PrefixReads, Protocol):
    """What the jobs read and teach: the ring's members, a joiner's arc, a spill's
    target, and the owner a finished prefill made."""


class PrewarmJobs:
    def __init__(self, policy: PrefixPolicy, *, prewarm_prefixes: int, replicate: bool,
                 block_size: int, max_prefix_blocks: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        # Prefixes per joining replica; 0: scale-up prewarm off.
        self._prewarm_prefixes = prewarm_prefixes
        self._replicate = replicate
        self._block_size = block_size
        self._max_prefix_blocks = max_prefix_blocks
        self._clock = clock
        self._lock = threading.Lock()
        # Members at the last replica list; None before the first non-empty one.
        self._known: frozenset[str] | None = None
        # Joined replica id -> when it joined, until the ingress takes it.
        self._joined: dict[str, float] = {}
        self._seated: frozenset[str] = frozenset()
        # Issued prewarm request id -> the one replica it may go to.
        self.pinned: OrderedDict[str, str] = OrderedDict()
        # Replication jobs not yet taken, and (replica, salt, tokens) of those queued or
        # in flight, so that a prefix is sent to a replica once at a time.
        self._replications: list[PrewarmJob] = []
        self.replicating: set[tuple[str, str | None, tuple[int, ...]]] = set()

    def note_joined(self, ids: Iterable[str], seated: frozenset[str]) -> None:
        """Queue every replica new since the last list, after the first non-empty one
        (the deployment's own start is not a scale-up); ``seated``: those with a rank."""
        if not self._prewarm_prefixes:
            return
        current = frozenset(ids)
        now = self._clock()
        with self._lock:
            if self._known is not None:
                for rid in current - self._known:
                    self._joined.setdefault(rid, now)
            if current:
                self._known = current
            for rid in [r for r in self._joined if r not in current]:
                del self._joined[rid]  # left before its prewarm began
            self._seated = seated

    def take(self) -> list[PrewarmJob]:
        """The joined replicas ready to prewarm (seated on the ring, or waited long
        enough), each with the hottest prefixes of its arc, and the replications
        queued; each handed out once."""
        if not self._joined and not self._replications:
            return []
        now = self._clock()
        with self._lock:
            ready = [rid for rid, since in self._joined.items()
                     if rid in self._seated or now - since >= SEAT_WAIT_S]
            for rid in ready:
                del self._joined[rid]
            replications, self._replications = self._replications, []
        # A LoRA adapter's prefix would need its adapter named as the model: not replayed.
        return [PrewarmJob(replica_id=rid, prefixes=tuple(
                    p for p in self._policy.hot_prefixes_of(rid, self._prewarm_prefixes)
                    if p.lora_name is None))
                for rid in ready if rid in self._policy.replicas] + replications

    def maybe_replicate(self, request: RouteRequest, decision: Decision,
                        in_flight: dict[str, int]) -> None:
        """Queue the prefix of an owner hit that filled its last owner with room for the
        replica its next request would spill to; ``in_flight``: the decision's loads."""
        if (not self._replicate or decision.outcome is not Outcome.OWNER_HIT
                or request.lora_name is not None or not request.token_ids):
            return
        target = self._policy.spill_target(request, decision, in_flight)
        if target is None:
            return
        replica_id, blocks = target
        tokens = tuple(request.token_ids[:min(blocks, self._max_prefix_blocks)
                                         * self._block_size])
        key = (replica_id, request.cache_salt, tokens)
        with self._lock:
            if key in self.replicating or len(self.replicating) >= _MAX_REPLICATING:
                return
            self.replicating.add(key)
            self._replications.append(PrewarmJob(replica_id=replica_id, reason="spill", prefixes=(
                HotPrefix(ring_key=0, token_ids=tokens, blocks=len(tokens) // self._block_size,
                          cache_salt=request.cache_salt, lora_name=None, lora_path=None,
                          heat=0.0),)))

    def issue_id(self, replica_id: str) -> str:
        """A request id that the router sends to ``replica_id`` alone."""
        request_id = f"{REQUEST_ID_PREFIX}{replica_id}-{uuid.uuid4().hex}"
        with self._lock:
            self.pinned[request_id] = replica_id
            while len(self.pinned) > _MAX_PINNED:
                self.pinned.popitem(last=False)
        return request_id

    def on_prewarmed(self, request_id: str, prefix: HotPrefix, ok: bool) -> None:
        """A prewarm finished: on success its replica now holds ``prefix`` and becomes
        an owner (never before: until then the prefix is not routed to it as owner)."""
        with self._lock:
            replica_id = self.pinned.pop(request_id, None)
            self.replicating.discard((replica_id or "", prefix.cache_salt, prefix.token_ids))
        if ok and replica_id is not None:
            self._policy.learn(replica_id, RouteRequest(
                token_ids=prefix.token_ids, cache_salt=prefix.cache_salt,
                lora_name=prefix.lora_name, lora_path=prefix.lora_path))

    def pinned_to(self, body: Any) -> str | None:
        """The replica a prewarm request (its parsed body) was issued for; None for any
        other request (an id a client made up is not in the issued set)."""
        if not self.pinned or body is None:
            return None
        request_id = getattr(body, "request_id", None)
        return self.pinned.get(request_id) if isinstance(request_id, str) else None
