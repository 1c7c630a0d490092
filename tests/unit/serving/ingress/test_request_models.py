"""The completions and chat bodies (serving/ingress/request_models.py): a wrong type that trips
one of vLLM's pre-validators is a validation error naming the field, not a crash; valid
bodies are upstream's models, unchanged, and travel to a replica by pickle."""

from __future__ import annotations

import pickle
import typing
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from ray.llm._internal.serve.core.configs import openai_api_models as upstream

from serving.config import ServiceConfig
from serving.ingress.request_models import ChatCompletionRequest, CompletionRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
CASES = [(ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)]


@pytest.mark.parametrize(("model", "base"), CASES)
def test_upstream_crashes_on_a_string_where_it_expects_an_object(model, base) -> None:
    # The contract this module exists for: if upstream ever validates the type first,
    # this fails and the wrapper can go.
    with pytest.raises(AttributeError):
        model.__mro__[1].model_validate({**base, "structured_outputs": "x"})


@pytest.mark.parametrize(("model", "base"), CASES)
def test_the_wrapper_turns_it_into_a_validation_error_naming_the_field(model, base) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate({**base, "structured_outputs": "x"})
    assert "'structured_outputs' has the wrong type" in str(info.value)


@pytest.mark.parametrize(("model", "base"), CASES)
def test_ordinary_errors_and_valid_bodies_are_untouched(model, base) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate({**base, "max_tokens": "ten"})
    assert info.value.errors()[0]["loc"][0] == "max_tokens"
    body = model.model_validate({**base, "max_tokens": 3})
    assert isinstance(body, model.__mro__[1]) and body.max_tokens == 3
    again = pickle.loads(pickle.dumps(body))
    assert type(again) is model and again.model_dump() == body.model_dump()


@pytest.mark.parametrize("message", [{"content": "hi"}, {"x": [], "t": [{"a": False}]},
                                     {"role": "", "content": "hi"}, {"role": 5}])
def test_a_chat_message_without_a_role_is_invalid(message: dict) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({**CHAT, "messages": [CHAT["messages"][0], message]})
    assert "messages[1] needs a 'role'" in str(info.value) or "role" in str(info.value)


def test_the_models_subclass_what_upstream_routes_take() -> None:
    assert issubclass(ChatCompletionRequest, upstream.ChatCompletionRequest)
    assert issubclass(CompletionRequest, upstream.CompletionRequest)


def test_the_ingress_answers_400_in_openai_shape() -> None:
    from serving.ingress.ingress import CacheRouteIngress, build_fastapi_app

    # The ingress's routes take these models (Serve binds them to the same methods).
    hints = {name: typing.get_type_hints(getattr(CacheRouteIngress, name))["body"]
             for name in ("chat", "completions")}
    assert hints == {"chat": ChatCompletionRequest, "completions": CompletionRequest}
    app = build_fastapi_app(ServiceConfig.model_validate(
        {"server": {"api_keys": [], "api_keys_env": None}}))

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest) -> dict[str, Any]:
        return {}

    @app.post("/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        return {}

    client = TestClient(app)
    for path, base in (("/chat", CHAT), ("/completions", COMPLETION)):
        resp = client.post(path, json={**base, "structured_outputs": "x"})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_request"
        assert "structured_outputs" in error["message"]
        assert client.post(path, json=base).status_code == 200
