"""The engine a replica starts: upstream's `VLLMEngine`, without a download task for a
model that is already on the node's disk.

Before the engine starts, upstream runs a Ray task on the replica's node to download
the model: a fresh worker process that imports Ray's LLM stack (seconds of CPU while
the replicas beside it are importing vLLM too), only to find a local folder where the
model already is. A model whose source is a folder on this node is used in place; a
hub model is downloaded as upstream does. Everything else is upstream's: the class is
only chosen (`LLMServer` takes an engine class), never reimplemented.
"""

from __future__ import annotations

import os


def model_on_disk(source: str | None) -> bool:
    """Whether the model's source is a folder on this node (nothing to download)."""
    return bool(source) and os.path.isdir(source)


def engine_class() -> type:
    """`VLLMEngine` without the download task for a model on disk (built on first use:
    the base class imports vLLM)."""
    from serving.ray_private import VLLMEngine

    class CacheRouteEngine(VLLMEngine):
        async def start(self) -> None:
            if model_on_disk(self.llm_config.get_engine_config().hf_model_id):
                # The callback instance upstream's start reads next (one per process).
                self.llm_config.get_or_create_callback().ctx.run_init_node = False
            await super().start()

    return CacheRouteEngine
