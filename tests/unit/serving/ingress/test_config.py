"""The `server` section: address, API keys and request limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import validate_config
from tests.unit.serving.config_factories import config_error, load_text


def test_server_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, "server: {port: 9000, api_keys: [k1, k2]}")
    assert config.server.port == 9000
    assert config.server.api_keys == ("k1", "k2")


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEROUTE_API_KEYS", " a, b ,,a")
    config = validate_config({"server": {"api_keys": ["c"]}})
    assert config.server.resolved_api_keys() == ("c", "a", "b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: {port: 70000}", "server.port: Input should be less than or equal to 65535"),
        ("server: {api_keys: [' k']}",
         "server.api_keys: Value error, API keys must be non-empty and without surrounding"),
        ("server: {max_json_depth: 4}",
         "server.max_json_depth: Input should be greater than or equal to 8"),
    ],
)
def test_invalid_server_is_one_line_naming_field(tmp_path: Path, text: str,
                                                 expected: str) -> None:
    assert expected in config_error(tmp_path, text)
