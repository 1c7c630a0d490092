"""Config loading: defaults, overrides, and one-line errors naming field and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    ServiceConfig,
    load_config,
    validate_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_default_config_is_valid_and_as_documented() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.replicas == 2
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.engine.enable_prefix_caching is True
    assert config.model.source == "default"
    assert config == load_config()  # None means the shipped default


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == ServiceConfig()


def test_the_service_routes_with_the_routing_cores_defaults() -> None:
    """The simulator and the benchmarks take their defaults from ``PolicyConfig``; the
    service must route the same way when the config says nothing."""
    from router import PolicyConfig

    routing, core = ServiceConfig().routing, PolicyConfig()
    assert (routing.load_epsilon, routing.load_floor) == (core.load_epsilon, core.load_floor)
    assert (routing.virtual_nodes, routing.session_affinity) == \
        (core.virtual_nodes, core.session_affinity)


def test_fields_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
model: {id: m1, source: org/name}
replicas: 3
engine: {block_size: 16, max_model_len: 2048, kv_cache_gib: 2, device: gpu}
routing: {policy: ray-prefix, load_epsilon: 0.5}
server: {port: 9000, api_keys: [k1, k2]}
"""))
    assert config.model.source == "org/name"
    assert config.replicas == 3
    assert config.engine.block_size == 16 and config.engine.device == "gpu"
    assert config.routing.policy == "ray-prefix" and config.routing.load_epsilon == 0.5
    assert config.server.api_keys == ("k1", "k2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("replicas: 0", "replicas: Input should be greater than or equal to 1"),
        ("replicas: many", "replicas: Input should be a valid integer"),
        ("engine: {blok_size: 16}", "engine.blok_size: unknown field"),
        ("routing: {policy: round-robin}",
         "routing.policy: Input should be 'pow2', 'ray-prefix', 'cacheroute' or 'random'"),
        ("engine: {kv_cache_gib: 0.5}", "engine.kv_cache_gib: Input should be a valid integer"),
        ("server: {port: 70000}", "server.port: Input should be less than or equal to 65535"),
        ("routing: {load_floor: -1}",
         "routing.load_floor: Input should be greater than or equal to 0"),
        ("model: {id: 'a b'}", "model.id: Value error, must not contain whitespace"),
        ("- 1\n- 2", "top level must be a mapping, got list"),
        ("engine: {enable_prefix_caching: false}\nrouting: {policy: cacheroute}",
         "needs engine.enable_prefix_caching: true"),
    ],
)
def test_invalid_config_is_one_line_naming_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: line 3: expected the node content"):
        load_config(write(tmp_path, "a: 1\nb: [\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/cacheroute.yaml")


def test_overrides_are_validated_like_the_file() -> None:
    config = ServiceConfig().with_overrides(replicas=4, policy="ray-prefix", port=8100)
    assert (config.replicas, config.routing.policy, config.server.port) == (4, "ray-prefix", 8100)
    with pytest.raises(ConfigError, match="command line: replicas"):
        ServiceConfig().with_overrides(replicas=-1)


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEROUTE_API_KEYS", " a, b ,,a")
    config = validate_config({"server": {"api_keys": ["c"]}})
    assert config.server.resolved_api_keys() == ("c", "a", "b")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "engine: {block_size: -1}")
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"cacheroute: config error: {path}: engine.block_size: "
                     "Input should be greater than or equal to 1"]


def test_configuration_reference_is_current() -> None:
    from serving.config import reference_markdown

    committed = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), (
        "docs/configuration.md is stale: run `cacheroute config --reference > docs/configuration.md`")


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
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_prefix_registry_redis_url_from_file_or_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHEROUTE_REDIS_URL", raising=False)
    assert ServiceConfig().prefixes.resolved_redis_url() is None  # in-process store
    monkeypatch.setenv("CACHEROUTE_REDIS_URL", "redis://env:6379/1")
    assert ServiceConfig().prefixes.resolved_redis_url() == "redis://env:6379/1"
    config = load_config(write(tmp_path, "prefixes: {redis_url: 'redis://file:6379/0'}"))
    assert config.prefixes.resolved_redis_url() == "redis://file:6379/0"  # the file wins
