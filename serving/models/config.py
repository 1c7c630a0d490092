"""The `model` section of the service config: which model is served, under what name.

Validation only; resolving `source` to a folder (and building the embedded default
model) is `serving/models/default.py`'s and `serving/runtime.py`'s work.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from serving.config_section import ConfigSection

# The model source that means "the embedded default model, built offline on set-up".
DEFAULT_MODEL_SOURCE = "default"


class ModelConfig(ConfigSection):
    """The model served."""

    id: str = Field("smollm2-135m-instruct", min_length=1, max_length=256)
    """Name clients send as `model` and `/v1/models` lists. Change it to publish the
    model under another name; it may not contain whitespace."""
    source: str = Field(DEFAULT_MODEL_SOURCE, min_length=1)
    """`default` (the embedded model, built offline on set-up), a local folder, or a model
    hub name. Change it to serve another model; a hub name needs hub access at start."""
    tokenizer: str | None = None
    """Tokenizer folder or hub name, when it is not the one that comes with `source`.
    Leave it unset unless the model folder has no tokenizer of its own."""

    @field_validator("id")
    @classmethod
    def _no_whitespace(cls, value: str) -> str:
        if value != value.strip() or any(c.isspace() for c in value):
            raise ValueError("must not contain whitespace")
        return value
