"""The `engine` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.serving.config_factories import config_error, load_text


def test_engine_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, "engine: {block_size: 16, max_model_len: 2048, "
                                 "kv_cache_gib: 2, device: gpu}")
    assert config.engine.block_size == 16 and config.engine.device == "gpu"
    assert (config.engine.max_model_len, config.engine.kv_cache_gib) == (2048, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("engine: {blok_size: 16}", "engine.blok_size: unknown field"),
        ("engine: {kv_cache_gib: 0.5}", "engine.kv_cache_gib: Input should be a valid integer"),
        ("engine: {device: tpu}", "engine.device: Input should be 'cpu' or 'gpu'"),
    ],
)
def test_invalid_engine_is_one_line_naming_field(tmp_path: Path, text: str,
                                                 expected: str) -> None:
    assert expected in config_error(tmp_path, text)
