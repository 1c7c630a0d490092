"""``ray-prefix``: Ray's ``PrefixCacheAffinityRouter``, simulated from its source.

Model of ``ray/llm/_internal/serve/routing_policies/prefix_aware/prefix_aware_router.py``
(Ray 2.60), per request:

1. Draw Serve's two random choices (the fallback; the draw is made even when
   unused, as Ray does, so the random stream matches).
2. If the gap between the longest and shortest queue exceeds
   ``imbalanced_threshold`` (Ray's default: infinity, so never), use the fallback.
3. Otherwise match the request's text (message contents concatenated, no chat
   template) in the character tree (``char_tree.py``). A match covering at least
   ``match_rate_threshold`` (0.1) of the text yields the replicas holding the
   matched prefix; a shorter one yields the replicas with the fewest characters
   in the tree.
4. Serve takes the candidate with the fewest requests in flight below
   ``max_ongoing_requests``, the first of equals; if all are full the request
   waits for one of *them* (Ray asks again and gets the same candidates).
5. On placement the text is inserted under the chosen replica (Ray's
   ``on_request_routed``).

The tree never evicts (Ray's ``do_eviction`` is off by default), so it can route
to a replica whose engine evicted the prefix long ago. Outcome labels:
``prefix_match``, ``smallest_tenant``, ``imbalanced``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

from bench.sim.block_cache import Allocation
from bench.sim.char_tree import CharPrefixTree
from bench.sim.prompts import SimRequest
from bench.sim.routers.base import Placement, least_busy
from bench.sim.routers.pow2 import two_choices
from router import InFlightCounts

# Ray's defaults (PrefixCacheAffinityRouter.initialize_state).
DEFAULT_MATCH_RATE_THRESHOLD = 0.1
DEFAULT_IMBALANCED_THRESHOLD = math.inf


class RayPrefixRouter:
    def __init__(self, replicas: Sequence[str], *, rng: random.Random,
                 match_rate_threshold: float = DEFAULT_MATCH_RATE_THRESHOLD,
                 imbalanced_threshold: float = DEFAULT_IMBALANCED_THRESHOLD,
                 name: str = "ray-prefix") -> None:
        self.name = name
        self._replicas = tuple(replicas)
        self._rng = rng
        self._match_rate_threshold = match_rate_threshold
        self._imbalanced_threshold = imbalanced_threshold
        self.tree = CharPrefixTree(self._replicas)
        self.outcomes: Counter[str] = Counter()

    def route(self, request: SimRequest, in_flight: InFlightCounts,
              max_ongoing: int | None) -> Placement:
        fallback = two_choices(self._replicas, self._rng)
        if self._imbalanced(in_flight, max_ongoing):
            self.outcomes["imbalanced"] += 1
            return Placement(least_busy(fallback, in_flight, max_ongoing), "imbalanced")
        text = request.text or ""
        matched, owners = self.tree.prefix_match(text)
        # Ray divides by len(text); an empty text (which Ray cannot route) counts as no match.
        if text and matched / len(text) >= self._match_rate_threshold:
            candidates, outcome = owners, "prefix_match"
        else:
            candidates, outcome = self.tree.smallest(), "smallest_tenant"
        self.outcomes[outcome] += 1
        chosen = least_busy(candidates, in_flight, max_ongoing)
        return Placement(chosen, outcome,
                         candidates=frozenset(candidates) if chosen is None else None)

    def _imbalanced(self, in_flight: InFlightCounts, max_ongoing: int | None) -> bool:
        if self._imbalanced_threshold == math.inf:
            return False  # Ray's default: the O(N) scan below cannot change the answer
        # Ray reads every candidate's queue length (cached, or probed when at the limit).
        loads = [in_flight.get(r, 0) for r in self._replicas]
        return max(loads) - min(loads) > self._imbalanced_threshold

    def on_placed(self, request: SimRequest, replica: str, now_s: float) -> None:
        self.tree.insert(request.text or "", replica)

    def on_kv_events(self, replica: str, allocation: Allocation, now_s: float) -> None:
        return None
