"""Which chat-template inputs a client may send: the served model's template, never its own.

A chat request is rendered through a Jinja template twice: by the router, to know the
prompt's tokens before the engine does (serving/routing/prompt_tokens.py), and by the
engine. vLLM's request models accept a `chat_template` of the client's own and
`chat_template_kwargs` passed straight to the renderer, where a `chat_template` key
replaces the model's template too. A template is a program: three nested loops
render for hours, and the router would render it on the ingress before the engine
ever refused it. So the ingress refuses, before any routing:

- a request-level `chat_template`;
- any `chat_template_kwargs` key the served model's own templates do not read (found
  once, at start, from the served tokenizer's templates with Jinja's own parser: the
  templates' undeclared variables, less those the renderer itself sets),
  `chat_template` among them;
- an allowed key whose value is not a JSON scalar (a template variable such as
  `enable_thinking` is a flag or a short string; a nested value is work the renderer
  would iterate over).

A refusal is an OpenAI-shaped 400 naming the parameter. Cost: one dict scan per chat
request; the templates are parsed once per ingress.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Variables the renderer sets itself (transformers' apply_chat_template and vLLM's):
# a client cannot usefully pass them as kwargs, and letting one through would let it
# replace what the server computed (the messages, the special tokens).
RENDERER_VARIABLES = frozenset({
    "messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
    "chat_template", "tokenize", "return_dict", "return_assistant_tokens_mask",
    "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
    "mask_token", "additional_special_tokens", "raise_exception", "strftime_now",
})

# Longest allowed string value: a template flag or mode name, not content.
MAX_KWARG_CHARS = 256


@dataclass(frozen=True, slots=True)
class TemplateRefusal:
    """Why a request's template inputs are refused, as OpenAI's error fields."""

    param: str
    message: str


def template_variables(source: str) -> frozenset[str]:
    """The variables a Jinja template reads from its context."""
    import jinja2
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(jinja2.Environment().parse(source)))


def tokenizer_templates(tokenizer: Any) -> list[str]:
    """The chat templates a loaded Hugging Face tokenizer holds: one, or several by name
    (a tool-use template beside the default, say)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        return [template]
    if isinstance(template, Mapping):
        return [t for t in template.values() if isinstance(t, str)]
    return []


class TemplateRefused(Exception):
    """A request's template inputs were refused; the ingress answers 400 with these."""

    def __init__(self, refusal: TemplateRefusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class ChatTemplateGuard:
    """Checks a parsed request's template inputs against the served model's templates."""

    def __init__(self, templates: Iterable[str]) -> None:
        read: set[str] = set()
        for source in templates:
            read |= template_variables(source)
        self.allowed_kwargs = frozenset(read - RENDERER_VARIABLES)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> ChatTemplateGuard:
        return cls(tokenizer_templates(tokenizer))

    def check(self, body: Any) -> None:
        """Raise ``TemplateRefused`` when ``body``'s template inputs may not render."""
        refusal = self.refusal(body)
        if refusal is not None:
            raise TemplateRefused(refusal)

    def refusal(self, body: Any) -> TemplateRefusal | None:
        """None when ``body``'s template inputs may reach a renderer."""
        if getattr(body, "chat_template", None) is not None:
            return TemplateRefusal(
                "chat_template", "Client chat templates are not accepted: requests are "
                "rendered with the served model's own template.")
        kwargs = getattr(body, "chat_template_kwargs", None)
        if not kwargs:
            return None
        if not isinstance(kwargs, Mapping):
            return TemplateRefusal("chat_template_kwargs",
                                   "chat_template_kwargs must be an object.")
        for key, value in kwargs.items():
            # The key is the client's: echoed back at most MAX_KWARG_CHARS of it.
            shown = str(key)[:MAX_KWARG_CHARS]
            param = f"chat_template_kwargs.{shown}"
            if key not in self.allowed_kwargs:
                allowed = ", ".join(sorted(self.allowed_kwargs)) or "none"
                return TemplateRefusal(
                    param, f"The served model's chat template does not read {shown!r}; "
                    f"accepted chat_template_kwargs: {allowed}.")
            if not _scalar(value):
                return TemplateRefusal(
                    param, f"chat_template_kwargs values must be booleans, numbers or "
                    f"strings of at most {MAX_KWARG_CHARS} characters.")
        return None


def _scalar(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, str) and len(value) <= MAX_KWARG_CHARS
