"""The `model` section."""

from __future__ import annotations

from pathlib import Path

from serving.config import DEFAULT_MODEL_SOURCE, ServiceConfig
from tests.unit.serving.config_factories import config_error, load_text


def test_the_default_source_is_the_embedded_model() -> None:
    assert ServiceConfig().model.source == DEFAULT_MODEL_SOURCE == "default"


def test_model_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, "model: {id: m1, source: org/name}")
    assert (config.model.id, config.model.source) == ("m1", "org/name")


def test_a_model_name_with_whitespace_is_refused(tmp_path: Path) -> None:
    assert "model.id: Value error, must not contain whitespace" in \
        config_error(tmp_path, "model: {id: 'a b'}")
