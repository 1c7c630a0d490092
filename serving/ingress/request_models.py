"""The completions and chat request bodies, as upstream defines them, made total.

vLLM's request models run `mode="before"` validators that assume the right types
before pydantic has checked them: `{"structured_outputs": "x"}` reaches
`data["structured_outputs"].get(...)` and raises `AttributeError`. Pydantic turns only
`ValueError` and `AssertionError` into a validation error; anything else escapes
FastAPI's body validation and leaves as a 500. Fuzzing found it for
`structured_outputs` in both endpoints; the same pattern recurs across those models.

These subclasses wrap the whole validation once: a `TypeError`, `AttributeError`,
`KeyError` or `IndexError` raised while validating becomes a `ValueError`, which
pydantic reports like any other invalid field, so the ingress answers 400 in OpenAI's
shape. The classes keep upstream's names, fields and behaviour (they are subclasses,
so `isinstance` checks in the replica hold), and the OpenAPI document is unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import ModelWrapValidatorHandler, model_validator
from ray.serve.llm import openai_api_models as upstream

# What a validator that trusted its input's type raises on a wrong one.
_TYPE_ASSUMPTION_ERRORS = (TypeError, AttributeError, KeyError, IndexError)


def _culprit(data: Any, handler: ModelWrapValidatorHandler[Any]) -> str | None:
    """The top-level field without which the body validates (error path only: one
    validation per field, so only malformed requests pay for naming it). None when no
    single field is to blame."""
    if not isinstance(data, dict):
        return None
    for key in list(data):
        try:
            handler({k: v for k, v in data.items() if k != key})
        except Exception:  # noqa: BLE001 - still invalid without it: not the one
            continue
        return str(key)
    return None


def _validate_totally(data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
    snapshot = dict(data) if isinstance(data, dict) else data  # validators may edit it
    try:
        return handler(data)
    except _TYPE_ASSUMPTION_ERRORS as err:
        field = _culprit(snapshot, handler)
        where = f"'{field}' has the wrong type" if field else "a field has the wrong type"
        raise ValueError(f"{where} ({type(err).__name__}: {err})") from None


class CompletionRequest(upstream.CompletionRequest):
    # Defined after (so run around) every validator of the parent classes.
    @model_validator(mode="wrap")
    @classmethod
    def _total(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        return _validate_totally(data, handler)


class ChatCompletionRequest(upstream.ChatCompletionRequest):
    @model_validator(mode="wrap")
    @classmethod
    def _total(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        return _validate_totally(data, handler)

    @model_validator(mode="after")
    def _every_message_has_a_role(self) -> "ChatCompletionRequest":
        # Upstream's message union admits any object (its custom-message arm has no
        # required keys); one without `role` passed validation and failed in the
        # replica's chat template (KeyError: 'role', a 500). Found by fuzzing.
        for i, message in enumerate(self.messages):
            role = (message.get("role") if isinstance(message, dict)
                    else getattr(message, "role", None))
            if not isinstance(role, str) or not role:
                raise ValueError(f"messages[{i}] needs a 'role' (a non-empty string)")
        return self
