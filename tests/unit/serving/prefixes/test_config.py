"""The `prefixes` section: bounds that agree with each other, and where the registry's
Redis URL comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ServiceConfig
from tests.unit.serving.config_factories import config_error, load_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prefixes: {redis_url: 'http://x:6379'}",
         "prefixes.redis_url: Value error, must be a redis://, rediss:// or unix:// URL"),
        ("prefixes: {max_prefixes: 0}", "prefixes.max_prefixes: Input should be greater than"),
        ("prefixes: {default_ttl_s: -1}", "prefixes.default_ttl_s: Input should be greater than 0"),
        ("prefixes: {max_ttl_s: .inf}", "prefixes.max_ttl_s: Input should be a finite number"),
        ("prefixes: {default_ttl_s: 100, max_ttl_s: 10}",
         "prefixes: Value error, default_ttl_s must not exceed max_ttl_s"),
        ("prefixes: {max_prefix_tokens: 5000, max_total_tokens: 4000}",
         "prefixes: Value error, max_prefix_tokens must not exceed max_total_tokens"),
        ("prefixes: {redis: 'redis://x'}", "prefixes.redis: unknown field"),
    ],
)
def test_invalid_prefix_registry_config(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(tmp_path, text)


def test_prefix_registry_redis_url_from_file_or_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHEROUTE_REDIS_URL", raising=False)
    assert ServiceConfig().prefixes.resolved_redis_url() is None  # in-process store
    monkeypatch.setenv("CACHEROUTE_REDIS_URL", "redis://env:6379/1")
    assert ServiceConfig().prefixes.resolved_redis_url() == "redis://env:6379/1"
    config = load_text(tmp_path, "prefixes: {redis_url: 'redis://file:6379/0'}")
    assert config.prefixes.resolved_redis_url() == "redis://file:6379/0"  # the file wins


def test_the_redis_namespace_is_plain_text() -> None:
    from serving.prefixes.config import PrefixConfig

    assert PrefixConfig().redis_namespace == "cacheroute"
    assert PrefixConfig(redis_namespace="prod-eu.1").redis_namespace == "prod-eu.1"
    for bad in ("", "a{b}", "has space", "x" * 129):
        with pytest.raises(ValueError):
            PrefixConfig(redis_namespace=bad)
