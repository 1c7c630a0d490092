"""The chat-template guard (serving/ingress/chat_templates.py): a client's template or
template variables never reach a renderer unless the served model's template reads them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from serving.ingress.chat_templates import (MAX_KWARG_CHARS, ChatTemplateGuard,
                                            TemplateRefused, template_variables,
                                            tokenizer_templates)

# A template reading one client variable (as Qwen3's reads `enable_thinking`).
THINKING = ("{% for m in messages %}{{ bos_token }}{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}{% if enable_thinking %}<think>{% endif %}{% endif %}")
PLAIN = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
HOSTILE = ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
           "{% endfor %}hi")


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 **fields)


def test_allowed_kwargs_are_the_template_variables_the_renderer_does_not_set():
    assert template_variables(THINKING) == {"messages", "bos_token", "add_generation_prompt",
                                            "enable_thinking"}
    assert ChatTemplateGuard([THINKING]).allowed_kwargs == {"enable_thinking"}
    assert ChatTemplateGuard([PLAIN]).allowed_kwargs == frozenset()


def test_a_request_without_template_inputs_passes():
    assert ChatTemplateGuard([PLAIN]).refusal(chat()) is None


def test_a_client_template_is_refused():
    refusal = ChatTemplateGuard([THINKING]).refusal(chat(chat_template=HOSTILE))
    assert refusal is not None and refusal.param == "chat_template"


def test_a_template_smuggled_in_kwargs_is_refused_even_where_other_kwargs_are_read():
    refusal = ChatTemplateGuard([THINKING]).refusal(
        chat(chat_template_kwargs={"chat_template": HOSTILE}))
    assert refusal is not None and refusal.param == "chat_template_kwargs.chat_template"


@pytest.mark.parametrize("key", ["messages", "bos_token", "tools", "add_generation_prompt"])
def test_kwargs_the_renderer_sets_are_refused(key):
    refusal = ChatTemplateGuard([THINKING]).refusal(chat(chat_template_kwargs={key: "x"}))
    assert refusal is not None and refusal.param == f"chat_template_kwargs.{key}"


def test_a_variable_the_template_reads_passes_and_one_it_does_not_is_refused():
    guard = ChatTemplateGuard([THINKING])
    assert guard.refusal(chat(chat_template_kwargs={"enable_thinking": False})) is None
    refusal = ChatTemplateGuard([PLAIN]).refusal(
        chat(chat_template_kwargs={"enable_thinking": False}))
    assert refusal is not None and refusal.param == "chat_template_kwargs.enable_thinking"
    assert "accepted chat_template_kwargs: none" in refusal.message


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, "x" * (MAX_KWARG_CHARS + 1)])
def test_allowed_kwargs_take_short_scalars_only(value):
    refusal = ChatTemplateGuard([THINKING]).refusal(
        chat(chat_template_kwargs={"enable_thinking": value}))
    assert refusal is not None and refusal.param == "chat_template_kwargs.enable_thinking"


def test_every_named_template_of_the_tokenizer_counts():
    named = SimpleNamespace(chat_template={"default": PLAIN, "tool_use": THINKING})
    assert tokenizer_templates(named) == [PLAIN, THINKING]
    assert ChatTemplateGuard.for_tokenizer(named).allowed_kwargs == {"enable_thinking"}
    assert tokenizer_templates(SimpleNamespace(chat_template=None)) == []


def test_check_raises_with_the_refusal():
    with pytest.raises(TemplateRefused) as refused:
        ChatTemplateGuard([PLAIN]).check(chat(chat_template=HOSTILE))
    assert refused.value.refusal.param == "chat_template"
    ChatTemplateGuard([PLAIN]).check(chat())  # nothing to refuse


def test_the_default_model_accepts_no_template_kwargs():
    from serving.models.default import ensure_default_model
    from serving.routing.prompt_tokens import load_tokenizer

    guard = ChatTemplateGuard.for_tokenizer(load_tokenizer(str(ensure_default_model())))
    assert guard.allowed_kwargs == frozenset()


def test_a_long_unread_key_is_echoed_back_cut_short():
    key = "k" * (10 * MAX_KWARG_CHARS)
    refusal = ChatTemplateGuard([PLAIN]).refusal(chat(chat_template_kwargs={key: True}))
    assert refusal is not None
    assert refusal.param == "chat_template_kwargs." + "k" * MAX_KWARG_CHARS
    assert len(refusal.message) < 3 * MAX_KWARG_CHARS
