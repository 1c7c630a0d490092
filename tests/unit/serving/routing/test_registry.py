"""LocalRouters: the one state the ingress and Serve's router share in one process."""

from __future__ import annotations

import gc
from typing import Any

from router import CacheAwarePolicy, PolicyConfig, RouteRequest
from serving.routing.registry import LocalRouters, local_routers


class FakeRouter:
    """What the ingress reads of a cacheroute router: its policy and replica views."""

    def __init__(self) -> None:
        self.policy = CacheAwarePolicy(PolicyConfig(block_size=4))
        self.policy.set_replicas(["a", "b"])

    def replica_views(self) -> list[Any]:
        return []


def test_the_ingress_reads_what_the_router_registered() -> None:
    routers, router = LocalRouters(), FakeRouter()
    assert routers.router_of("LLMServer:m") is None
    assert routers.prefix_placement("LLMServer:m", range(8)) is None
    assert routers.forget_prefix("LLMServer:m", range(8)) == 0
    routers.register_router("LLMServer:m", router)
    assert routers.router_of("LLMServer:m") is router
    tokens = tuple(range(8))
    home = router.policy.select(RouteRequest(token_ids=tokens), {}).replica_id
    placement = routers.prefix_placement("LLMServer:m", tokens)
    assert placement is not None and placement.holders == {home}
    assert routers.forget_prefix("LLMServer:m", tokens) == 2
    assert routers.prefix_placement("LLMServer:m", tokens).holders == frozenset()


def test_routers_and_sources_are_held_weakly() -> None:
    routers, router = LocalRouters(), FakeRouter()
    routers.register_router("LLMServer:m", router)
    routers.register_source(router)
    routers.register_source(router)  # idempotent
    assert routers.sources() == [router]
    del router
    gc.collect()
    assert routers.router_of("LLMServer:m") is None and routers.sources() == []


def test_the_process_has_one() -> None:
    assert local_routers() is local_routers()
