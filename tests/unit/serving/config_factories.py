"""Config files for the config tests: each test writes the YAML a user would, loads it
through `load_config` and checks the outcome, so every section's errors are also
checked to reach the CLI as one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ConfigError, ServiceConfig, load_config


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> ServiceConfig:
    return load_config(write_config(tmp_path, text))


def config_error(tmp_path: Path, text: str) -> str:
    """The one-line message of the `ConfigError` that loading `text` raises."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message
