"""The service configuration: one YAML file, validated once, here.

Each feature keeps its section beside its code (`serving/<feature>/config.py`, all built
on `serving/config_section.py`); this module assembles them into `ServiceConfig`, checks
what spans sections, loads the file and re-exports the sections, so `from serving.config
import RoutingConfig` works wherever it is written. Everything downstream (the Ray Serve
application, the CLI, the Helm chart) takes a `ServiceConfig` and never re-validates. A
bad file fails with a single line naming the field and the reason (`ConfigError`), never
a traceback. docs/configuration.md and the chart's config values and schema are generated
from these classes (`make generate`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from serving.config_section import ConfigSection
from serving.documents.config import DocumentConfig
from serving.failover.config import FailoverConfig
from serving.ingress.config import ServerConfig
from serving.models.config import DEFAULT_MODEL_SOURCE, ModelConfig
from serving.observability.config import TracingConfig
from serving.prefixes.config import REDIS_URL_ENV, PrefixConfig
from serving.replica.config import EngineConfig
from serving.routing.config import POLICIES, Policy, RoutingConfig
from serving.tenants.config import TenantConfig, TenantLimits

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_MODEL_SOURCE",
    "POLICIES",
    "REDIS_URL_ENV",
    "ConfigError",
    "ConfigSection",
    "DocumentConfig",
    "EngineConfig",
    "FailoverConfig",
    "ModelConfig",
    "Policy",
    "PrefixConfig",
    "RoutingConfig",
    "ServerConfig",
    "ServiceConfig",
    "TenantConfig",
    "TenantLimits",
    "TracingConfig",
    "load_config",
    "reference_markdown",
    "validate_config",
]

# Shipped default config, used by `make serve` and when `--config` is not given.
DEFAULT_CONFIG_PATH = Path(__file__).with_name("configs") / "default.yaml"


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line for the CLI."""


class ServiceConfig(ConfigSection):
    """The whole service: every section, and the checks that span sections."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    replicas: int = Field(2, ge=1, le=1024)
    """Engine replicas, one vLLM engine each; the floor when the chart autoscales. More
    replicas hold more prefixes in cache and serve more requests at once."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    tenant_limits: TenantLimits = Field(default_factory=TenantLimits)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    prefixes: PrefixConfig = Field(default_factory=PrefixConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    documents: DocumentConfig = Field(default_factory=DocumentConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "ServiceConfig":
        if self.routing.policy == "cacheroute" and not self.engine.enable_prefix_caching:
            raise ValueError("routing.policy 'cacheroute' needs engine.enable_prefix_caching: true")
        return self

    def llm_deployment_name(self) -> str:
        """Serve deployment name of the engines; mirrors ray.serve.llm's own naming so
        `serve status` reads the same as upstream apps."""
        return "LLMServer:" + self.model.id.replace("/", "--").replace(".", "_")

    def with_overrides(self, *, replicas: int | None = None, policy: str | None = None,
                       port: int | None = None, model_source: str | None = None) -> "ServiceConfig":
        """A copy with CLI overrides applied, validated like the file itself."""
        data = self.model_dump()
        if replicas is not None:
            data["replicas"] = replicas
        if policy is not None:
            data["routing"]["policy"] = policy
        if port is not None:
            data["server"]["port"] = port
        if model_source is not None:
            data["model"]["source"] = model_source
        return validate_config(data, origin="command line")


def _first_error_line(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {loc}: {msg}{more}"


def validate_config(data: Any, *, origin: str = "config") -> ServiceConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: top level must be a mapping, got {type(data).__name__}")
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_first_error_line(err, origin)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> ServiceConfig:
    """Read and validate a YAML config file (the shipped default when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    return validate_config(data, origin=str(path))


def _sections() -> list[tuple[str, type[ConfigSection]]]:
    """The YAML keys that hold a section, with the section's class, in file order."""
    return [(name, field.annotation) for name, field in ServiceConfig.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)]


def _module_path(model: type[BaseModel]) -> str:
    return model.__module__.replace(".", "/") + ".py"


def reference_markdown() -> str:
    """docs/configuration.md: every field with its default (as YAML writes it) and its
    description, section by section (tests/unit/serving/test_config.py keeps the
    committed file current)."""
    lines = ["# Configuration reference", "",
             ("Generated from the config classes (`serving/config.py` and each feature's "
              "`serving/<feature>/config.py`) by `make generate`; do not edit by hand."), "",
             ("Every field is optional. Unknown fields are errors. "
              "`cacheroute config --config FILE` prints a file's values with every default."),
             ""]

    def table(prefix: str, model: type[BaseModel]) -> None:
        rows = []
        defaults = model().model_dump(mode="json")
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            doc = " ".join((field.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | `{json.dumps(defaults[name])}` | {doc} |")
        if rows:
            lines.extend(["| field | default | meaning |", "|---|---|---|", *rows, ""])

    table("", ServiceConfig)
    for name, model in _sections():
        intro = " ".join((model.__doc__ or "").split())
        lines.extend([f"## `{name}`", "", f"{intro} Defined in `{_module_path(model)}`.", ""])
        table(f"{name}.", model)
    return "\n".join(lines).rstrip() + "\n"
