"""The base of every section of the service config (`serving/config.py`).

Each feature keeps its own section beside its code (`serving/<feature>/config.py`) and
derives it from `ConfigSection`, so every section is strict and immutable alike. This
module imports nothing of the service, so a section module never pulls in its feature's
runtime (Ray, vLLM, HTTP) nor the assembled config: importing a section costs pydantic.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    """One validated, frozen section of the YAML config. A field's docstring is its
    description; docs/configuration.md and the chart's values are generated from it."""

    # Unknown keys are typos in a hand-written YAML file: reject them rather than ignore.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
