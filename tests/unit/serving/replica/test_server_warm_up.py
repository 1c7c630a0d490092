"""The replica's warm-up leaves the engine with an empty prefix cache, and the router
told so before the replica takes traffic."""

from __future__ import annotations

import asyncio

from serving.replica.server import PROBE_PROMPT, WARMUP_PROMPT, CacheRouteServer


class RecordingEngine:
    def __init__(self, calls: list[object]) -> None:
        self._calls = calls

    async def reset_prefix_cache(self) -> None:
        self._calls.append("reset")


class WarmingReplica:
    """What ``_warm_up`` uses of the replica: its engine and one generation."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.engine = RecordingEngine(self.calls)

    async def _generate_once(self, prompt: str, *, max_tokens: int) -> None:
        self.calls.append(("generate", prompt, max_tokens))


def test_the_warm_up_steps_the_engine_after_resetting_its_prefix_cache() -> None:
    # vLLM publishes the reset's AllBlocksCleared only after an engine step; without
    # the last generation it would arrive with the first routed request's step and
    # erase the owners the router learned from routing by then.
    replica = WarmingReplica()
    asyncio.run(CacheRouteServer._warm_up(replica))  # type: ignore[arg-type]
    assert replica.calls == [("generate", WARMUP_PROMPT, 2), "reset",
                             ("generate", PROBE_PROMPT, 1)]
