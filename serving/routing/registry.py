"""The routers of this process and what the ingress reads from them.

Serve runs the request router of each handle the ingress holds inside the ingress
process, on its own event loop and thread, and builds it separately from the ingress:
neither can be handed the other, and Serve gives the two no channel but the request's
internal id (``PendingRequest.metadata.internal_request_id``, equal to the ingress's
own request-context id, ``serving.ray_private.serve_request_id``). So they meet in
``local_routers()``, one ``LocalRouters`` per process and the only state the ingress
and Serve's router share:

    attempts      failover (serving/failover/attempts.py): the router records where
                  each request went; the ingress marks what a retry must avoid
    route_log     tracing (serving/observability/route_log.py): the router records
                  each decision; the ingress writes it as the request's route span
    predictions   routing accuracy (serving/observability/predictions.py): the router
                  records the cached tokens each decision predicts; the ingress
                  counts them against the engine's usage
    routers       the ``cacheroute`` router of each deployment: the prefix registry
                  (serving/prefixes/backend.py) asks where a prefix lives or makes it
                  forget one; the prewarm (serving/routing/prewarm.py) takes jobs
    sources       every router of the process, whatever its policy: the app's
                  ``/metrics`` (serving/observability/telemetry.py) reads their
                  replicas' views

Routers are held weakly (Serve creates them and owns their lifetime: a discarded one
drops out). Each part is thread-safe on its own; a router's policy takes its own lock.
Kept out of serving/routing/cacheroute.py on purpose: Ray Serve pickles that module
*by value* (RequestRouterConfig), and a lock or a weak map cannot be pickled.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Optional, Sequence

from router import Placement, RouteRequest
from serving.failover.attempts import AttemptLog
from serving.observability.predictions import PredictionLog
from serving.observability.route_log import RouteLog


class LocalRouters:
    def __init__(self) -> None:
        self.attempts = AttemptLog()
        self.route_log = RouteLog()
        self.predictions = PredictionLog()
        self._routers: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._sources: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    # --- written by the routers -----------------------------------------------------

    def register_router(self, deployment: str, router: Any) -> None:
        """``router`` (a CacheRouteRequestRouter) is ``deployment``'s router here."""
        with self._lock:
            self._routers[deployment] = router

    def register_source(self, source: Any) -> None:
        """Add a router to the app's ``/metrics``: anything with ``replica_views()``
        (serving/observability/telemetry.py, ``ReplicaSource``). Idempotent."""
        with self._lock:
            self._sources.add(source)

    # --- read by the ingress --------------------------------------------------------

    def router_of(self, deployment: str) -> Any | None:
        """This process's router of ``deployment`` (None until Serve has created it)."""
        with self._lock:
            return self._routers.get(deployment)

    def sources(self) -> list[Any]:
        """The live routers whose replicas ``/metrics`` shows."""
        with self._lock:
            return list(self._sources)

    def prefix_placement(self, deployment: str, token_ids: Sequence[int], *,
                         cache_salt: Optional[str] = None) -> Optional[Placement]:
        """Where the router of ``deployment`` believes this prefix lives; routes nothing.
        None until Serve has created that router here, or with no replicas."""
        router = self.router_of(deployment)
        if router is None:
            return None
        return router.policy.placement(RouteRequest(token_ids=tuple(token_ids),
                                                    cache_salt=cache_salt))

    def forget_prefix(self, deployment: str, token_ids: Sequence[int], *,
                      cache_salt: Optional[str] = None) -> int:
        """Make the router of ``deployment`` forget who holds this prefix's blocks."""
        router = self.router_of(deployment)
        if router is None:
            return 0
        return router.policy.forget_prefix(RouteRequest(token_ids=tuple(token_ids),
                                                        cache_salt=cache_salt))


_LOCAL_ROUTERS = LocalRouters()


def local_routers() -> LocalRouters:
    """This process's one ``LocalRouters`` (module docstring: why a process-wide one)."""
    return _LOCAL_ROUTERS
