"""The assembled config: loading, defaults, overrides, one-line errors naming field and
reason, the checks that span sections, and what is generated from the field
descriptions. Each section's own fields are tested beside its feature
(tests/unit/serving/<feature>/test_config.py)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import serving.config
from serving.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    ServiceConfig,
    load_config,
    reference_markdown,
)
from serving.config_section import ConfigSection
from tests.unit.serving.config_factories import config_error, load_text, write_config

ROOT = Path(__file__).resolve().parents[3]

# Each section, the module that defines it, and the runtime modules of its feature that
# importing the section must not pull in (the section is read before any of them starts).
SECTIONS = {
    "ModelConfig": ("serving.models.config", ("serving.models.default", "serving.runtime")),
    "EngineConfig": ("serving.replica.config", ("serving.replica.server", "vllm")),
    "RoutingConfig": ("serving.routing.config", ("serving.routing.cacheroute", "ray")),
    "ServerConfig": ("serving.ingress.config", ("serving.ingress.ingress", "fastapi")),
    "TracingConfig": ("serving.observability.config", ("serving.observability.tracing",
                                                       "opentelemetry")),
    "PrefixConfig": ("serving.prefixes.config", ("serving.prefixes.registry", "redis")),
    "FailoverConfig": ("serving.failover.config", ("serving.failover.failover",)),
    "DocumentConfig": ("serving.documents.config", ("serving.documents.service",)),
}


def test_shipped_default_config_is_valid_and_as_documented() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.replicas == 2
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.engine.enable_prefix_caching is True
    assert config.model.source == "default"
    assert config == load_config()  # None means the shipped default


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == ServiceConfig()


def test_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, """
model: {id: m1, source: org/name}
replicas: 3
engine: {block_size: 16, max_model_len: 2048, kv_cache_gib: 2, device: gpu}
routing: {policy: ray-prefix, load_epsilon: 0.5}
server: {port: 9000, api_keys: [k1, k2]}
""")
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
        ("bogus: 1", "bogus: unknown field"),
        ("replicas: 0\nengine: {block_size: 0}", "(and 1 more)"),
    ],
)
def test_invalid_config_is_one_line_naming_field(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(tmp_path, text)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: line 3: expected the node content"):
        load_config(write_config(tmp_path, "a: 1\nb: [\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/cacheroute.yaml")


def test_overrides_are_validated_like_the_file() -> None:
    config = ServiceConfig().with_overrides(replicas=4, policy="ray-prefix", port=8100)
    assert (config.replicas, config.routing.policy, config.server.port) == (4, "ray-prefix", 8100)
    with pytest.raises(ConfigError, match="command line: replicas"):
        ServiceConfig().with_overrides(replicas=-1)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, "engine: {block_size: -1}")
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"cacheroute: config error: {path}: engine.block_size: "
                     "Input should be greater than or equal to 1"]


# -- sections beside their features --------------------------------------------------

@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_each_section_is_reexported_from_its_feature(name: str) -> None:
    module = importlib.import_module(SECTIONS[name][0])
    section = getattr(module, name)
    assert getattr(serving.config, name) is section
    assert issubclass(section, ConfigSection) and section.__doc__
    assert section in {f.annotation for f in ServiceConfig.model_fields.values()}


def test_a_section_imports_neither_its_feature_nor_the_assembled_config() -> None:
    """Importing a section must not start its feature (Ray, vLLM, HTTP) nor import
    serving.config, which imports every section: that would be a cycle."""
    code = textwrap.dedent("""
        import sys
        for module, avoid in SECTIONS.values():
            before = set(sys.modules)
            __import__(module)
            pulled = set(sys.modules) - before
            bad = [m for m in pulled if m == "serving.config"
                   or any(m == a or m.startswith(a + ".") for a in avoid)]
            assert not bad, (module, bad)
    """)
    proc = subprocess.run([sys.executable, "-c", f"SECTIONS = {SECTIONS!r}\n{code}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def _fields() -> list[tuple[str, str | None]]:
    out = [(f"{name}", field.description) for name, field in ServiceConfig.model_fields.items()
           if not (isinstance(field.annotation, type) and issubclass(field.annotation,
                                                                     ConfigSection))]
    for section, field in ServiceConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, ConfigSection):
            out += [(f"{section}.{name}", f.description) for name, f in model.model_fields.items()]
    return out


@pytest.mark.parametrize(("path", "description"), _fields())
def test_every_field_says_what_it_does_without_measurements(path: str,
                                                            description: str | None) -> None:
    """A field's description goes into docs/configuration.md and the chart's values:
    it says what the knob does and when to change it. Measured numbers go stale, so
    they live in docs/benchmarks/, and links name files, never headings."""
    assert description and len(description.split()) >= 4, f"{path}: no description"
    assert "%" not in description, f"{path}: a measured share"
    assert not re.search(r"docs/\S*#", description), f"{path}: a link to a heading"
    assert not re.search(r"\.md\b,\s*\"", description), f"{path}: a section title"
    assert "docs/benchmarks/notes/" not in description, f"{path}: a benchmark figure"


# -- generated from the descriptions ---------------------------------------------------

def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), (
        "docs/configuration.md is stale: run `make generate`")


def test_configuration_reference_writer_checks_the_committed_file() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_config_reference.py"),
                           "--check"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_reference_lists_every_field_with_its_default() -> None:
    text = reference_markdown()
    for path, _ in _fields():
        assert f"| `{path}` |" in text
    assert "| `routing.load_floor` | `4` |" in text
    assert "| `model.tokenizer` | `null` |" in text
    assert "Defined in `serving/routing/config.py`." in text
