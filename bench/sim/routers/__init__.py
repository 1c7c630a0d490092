"""The simulated routing policies, one per module, behind ``base.SimRouter``.

* ``cacheroute``: the real ``router.CacheAwarePolicy`` and its waits, ``router.Admission``
  (``cacheroute.py``).
* ``pow2``: Ray Serve's power of two choices (``pow2.py``).
* ``ray-prefix``: Ray's ``PrefixCacheAffinityRouter`` (``ray_prefix.py``).
* ``random``: a uniformly random replica (``random_choice.py``).
* ``ray-prefix-local`` (not run by default): ``ray-prefix`` with its tree kept per
  ingress instead of in Ray's shared actor; differs from ``ray-prefix`` only with
  several ingresses.

``ingresses`` > 1 gives each ingress its own router instance (``ingresses.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from bench.sim.routers.base import Placement, SimRouter, least_busy
from bench.sim.routers.cacheroute import CacheRouteRouter
from bench.sim.routers.ingresses import Ingresses
from bench.sim.routers.pow2 import Pow2Router
from bench.sim.routers.random_choice import RandomRouter
from bench.sim.routers.ray_prefix import DEFAULT_IMBALANCED_THRESHOLD, RayPrefixRouter
from router import PolicyConfig

__all__ = ["DEFAULT_POLICIES", "POLICIES", "Placement", "SimRouter", "least_busy",
           "make_router"]

# The live benchmark's policies, run by default; then the simulator-only ones.
DEFAULT_POLICIES = ("cacheroute", "pow2", "ray-prefix", "random")
POLICIES = (*DEFAULT_POLICIES, "ray-prefix-local")


def make_router(name: str, replicas: Sequence[str], *, policy_config: PolicyConfig,
                clock: Callable[[], float], seed: int, kv_events: bool = True,
                ray_imbalanced_threshold: float = DEFAULT_IMBALANCED_THRESHOLD,
                spill_wait_s: float = 0.0, ingresses: int = 1) -> SimRouter:
    """A fresh router (empty state) for one run, or one per ingress (``ingresses.py``).
    Random streams are seeded per policy (and ingress) from ``seed`` with a string
    seed, stable across processes; the first ingress's stream is the single router's."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if ingresses < 1:
        raise ValueError(f"ingresses must be >= 1, got {ingresses}")

    def one(instance: int) -> SimRouter:
        rng = random.Random(f"sim-router:{name}:{seed}" + (f":{instance}" if instance else ""))
        if name == "cacheroute":
            return CacheRouteRouter(replicas, policy_config, clock=clock, kv_events=kv_events,
                                    spill_wait_s=spill_wait_s)
        if name == "pow2":
            return Pow2Router(replicas, rng=rng)
        if name in ("ray-prefix", "ray-prefix-local"):
            return RayPrefixRouter(replicas, rng=rng, name=name,
                                   imbalanced_threshold=ray_imbalanced_threshold)
        return RandomRouter(replicas, rng=rng)

    # Ray's routers share one PrefixTreeActor: K of them decide as one does.
    if ingresses == 1 or name == "ray-prefix":
        return one(0)
    return Ingresses([one(i) for i in range(ingresses)],
                     rng=random.Random(f"sim-ingress:{seed}"))
