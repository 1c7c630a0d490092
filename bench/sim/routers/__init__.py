"""The simulated routing policies, one per module, behind ``base.SimRouter``.

* ``cacheroute``: the real ``router.CacheAwarePolicy`` (``cacheroute.py``).
* ``pow2``: Ray Serve's power of two choices (``pow2.py``).
* ``ray-prefix``: Ray's ``PrefixCacheAffinityRouter`` (``ray_prefix.py``).
* ``random``: a uniformly random replica (``random_choice.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from bench.sim.routers.base import Placement, SimRouter, least_busy
from bench.sim.routers.cacheroute import CacheRouteRouter
from bench.sim.routers.pow2 import Pow2Router
from bench.sim.routers.random_choice import RandomRouter
from bench.sim.routers.ray_prefix import DEFAULT_IMBALANCED_THRESHOLD, RayPrefixRouter
from router import PolicyConfig

__all__ = ["POLICIES", "Placement", "SimRouter", "least_busy", "make_router"]

POLICIES = ("cacheroute", "pow2", "ray-prefix", "random")


def make_router(name: str, replicas: Sequence[str], *, policy_config: PolicyConfig,
                clock: Callable[[], float], seed: int, kv_events: bool = True,
                ray_imbalanced_threshold: float = DEFAULT_IMBALANCED_THRESHOLD,
                spill_wait_s: float = 0.0) -> SimRouter:
    """A fresh router (empty state) for one run. Random streams are seeded per
    policy from ``seed`` with a string seed, stable across processes."""
    rng = random.Random(f"sim-router:{name}:{seed}")
    if name == "cacheroute":
        return CacheRouteRouter(replicas, policy_config, clock=clock, kv_events=kv_events,
                                spill_wait_s=spill_wait_s)
    if name == "pow2":
        return Pow2Router(replicas, rng=rng)
    if name == "ray-prefix":
        return RayPrefixRouter(replicas, rng=rng, imbalanced_threshold=ray_imbalanced_threshold)
    if name == "random":
        return RandomRouter(replicas, rng=rng)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
