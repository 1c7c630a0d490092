"""This process's `cacheroute` router of each deployment, for in-process readers.

The prefix registry of the ingress (serving/prefixes/backend.py) lives in the same
process as the router of the ingress's handle and asks it where a prefix lives, or
tells it to forget one; the scale-up prewarm (serving/routing/prewarm.py) takes the replicas
that joined from it. Serve creates routers and owns their lifetime, so a weak map
is the way to reach one. Reads and writes go through the policy's lock.

Kept out of serving/routing/cacheroute.py on purpose: Ray Serve pickles the router's module
*by value* (RequestRouterConfig), and a module-level weak map cannot be pickled.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional, Sequence

from router import Placement, RouteRequest

_ROUTERS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


def register_router(deployment: str, router: Any) -> None:
    """Record ``router`` (a CacheRouteRequestRouter) as ``deployment``'s router here."""
    _ROUTERS[deployment] = router


def router_of(deployment: str) -> Any | None:
    """This process's router of ``deployment`` (None until Serve has created it); the
    scale-up prewarm (serving/routing/prewarm.py) takes its jobs from it."""
    return _ROUTERS.get(deployment)


def prefix_placement(deployment: str, token_ids: Sequence[int], *,
                     cache_salt: Optional[str] = None) -> Optional[Placement]:
    """Where the router of ``deployment`` believes this prefix lives; routes nothing.
    None until Serve has created that router here, or with no replicas."""
    router = _ROUTERS.get(deployment)
    if router is None:
        return None
    return router.policy.placement(RouteRequest(token_ids=tuple(token_ids),
                                                cache_salt=cache_salt))


def forget_prefix(deployment: str, token_ids: Sequence[int], *,
                  cache_salt: Optional[str] = None) -> int:
    """Make the router of ``deployment`` forget who holds this prefix's blocks."""
    router = _ROUTERS.get(deployment)
    if router is None:
        return 0
    return router.policy.forget_prefix(RouteRequest(token_ids=tuple(token_ids),
                                                    cache_salt=cache_salt))
