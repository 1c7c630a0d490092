"""What the engine loads: `model.source` resolved to vLLM's `model` argument.

`default` is the embedded model, built on this node the first time (serving/models/default.py);
a path is a local Hugging Face folder, checked here so that a typo fails before Ray
starts; anything else is a hub name, passed through for vLLM to download. Called by
`cacheroute serve` and `cacheroute model` before Ray starts, and by the Serve
application builder (serving/app.py) on the node that builds the application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from serving.config import DEFAULT_MODEL_SOURCE, ConfigError, ServiceConfig


def resolve_model_source(config: ServiceConfig, *, progress: Callable[[str], None] = print) -> str:
    """The engine's `model` argument: a built default, a local folder, or a hub name."""
    source = config.model.source
    if source == DEFAULT_MODEL_SOURCE:
        from serving.models.default import ensure_default_model

        return str(ensure_default_model(progress=progress))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.source: {path} has no config.json")
        return str(path.resolve())
    if source.startswith((".", "/", "~")):
        raise ConfigError(f"model.source: {source}: no such folder")
    return source  # a hub name: vLLM downloads it (needs network and, maybe, HF_TOKEN)
