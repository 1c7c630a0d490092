"""The replica's engine class: upstream's, without the download task for a model
already on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.replica.engine import engine_class, model_on_disk


def test_a_folder_is_on_disk_and_a_hub_name_or_missing_path_is_not(tmp_path: Path):
    assert model_on_disk(str(tmp_path))
    assert not model_on_disk("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not model_on_disk(str(tmp_path / "missing"))
    assert not model_on_disk(None)


class _Config:
    def __init__(self, source: str) -> None:
        self._engine = SimpleNamespace(hf_model_id=source)
        self._callback = SimpleNamespace(ctx=SimpleNamespace(run_init_node=True))

    def get_engine_config(self):
        return self._engine

    def get_or_create_callback(self):
        return self._callback


@pytest.mark.parametrize("on_disk", [True, False])
def test_the_download_task_runs_only_for_a_model_not_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_disk: bool):
    from serving.ray_private import VLLMEngine

    seen = []

    async def upstream_start(self) -> None:  # what upstream's start would read
        seen.append(self.llm_config.get_or_create_callback().ctx.run_init_node)

    monkeypatch.setattr(VLLMEngine, "start", upstream_start)
    cls = engine_class()
    assert issubclass(cls, VLLMEngine)
    engine = cls.__new__(cls)
    engine.llm_config = _Config(str(tmp_path) if on_disk else "org/hub-model")
    asyncio.run(engine.start())
    assert seen == [not on_disk]
