"""Prompt token ids as the engine will see them, computed once in the router.

The router's prefix key is the engine's own blocks, so it must tokenise exactly like
vLLM's OpenAI frontend does:
- completions: `tokenizer.encode(prompt, add_special_tokens=request.add_special_tokens)`
  (a prompt already given as token ids is used as is);
- chat: the model's chat template rendered with `add_generation_prompt` /
  `continue_final_message` / `chat_template_kwargs` from the request, then encoded
  without adding special tokens (the template already placed them). Content given as
  a list of text parts is joined with newlines, as vLLM does for string templates.
An integration test compares these ids with the `prompt_token_ids` vLLM returns.

Cost: encoding is the router's most expensive step (about 10 ms for a 7k-token
prompt on one core, docs/benchmarks/results.md), so text is encoded segment by
segment between special tokens, with repeated segments (system prompts, few-shot blocks) cached
(`segment_tokens.py`): a request whose system prompt was seen before pays only for its
new turns. The router calls this in a worker thread, under a time budget
(serving/routing/route_requests.py), so its event loop keeps routing meanwhile.
"""

from __future__ import annotations

import functools
from array import array
from typing import Any

from serving.routing.segment_tokens import SegmentEncoder


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _text_of(content: Any) -> Any:
    if isinstance(content, list):
        texts = [part.get("text", "") if isinstance(part, dict) else str(part)
                 for part in content
                 if not isinstance(part, dict) or part.get("type", "text") == "text"]
        return "\n".join(texts)
    return content


def _message_dict(message: Any) -> dict[str, Any]:
    if hasattr(message, "model_dump"):
        message = message.model_dump(exclude_none=True)
    message = dict(message)
    if "content" in message:
        message["content"] = _text_of(message["content"])
    return message


class PromptTokenizer:
    """Token ids of a parsed OpenAI request, or None when they cannot be known exactly."""

    def __init__(self, tokenizer_path: str) -> None:
        self._path = tokenizer_path
        self._encoder: SegmentEncoder | None = None

    @property
    def tokenizer(self) -> Any:
        return load_tokenizer(self._path)

    def _encoded(self, text: str, add_special_tokens: bool, packed: bool,
                 salt: str | None) -> array | tuple[int, ...]:
        # Cached segments are kept per cache salt, i.e. per tenant (segment_tokens.py).
        if self._encoder is None:
            self._encoder = SegmentEncoder(self.tokenizer)
        if packed:
            return self._encoder.encode_packed(text, add_special_tokens=add_special_tokens,
                                               salt=salt)
        return tuple(self._encoder.encode(text, add_special_tokens=add_special_tokens,
                                          salt=salt))

    def token_ids(self, request: Any) -> tuple[int, ...] | None:
        return self._ids(request, packed=False)  # type: ignore[return-value]

    def packed_ids(self, request: Any) -> array | tuple[int, ...] | None:
        """``token_ids`` as the router hashes them: text is encoded into an
        ``array("I")`` (router/hashing.py hashes it without packing it again);
        ids the client gave are kept as a tuple, as they may not fit in 32 bits."""
        return self._ids(request, packed=True)

    def _ids(self, request: Any, packed: bool) -> array | tuple[int, ...] | None:
        if getattr(request, "messages", None) is not None:
            return self._chat(request, packed)
        prompt = getattr(request, "prompt", None)
        if isinstance(prompt, str):
            return self._encoded(prompt, bool(getattr(request, "add_special_tokens", True)),
                                 packed, getattr(request, "cache_salt", None))
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return tuple(prompt)
        # Batched prompts, embeddings: several sequences, no single prefix to route on.
        return None

    def _chat(self, request: Any, packed: bool) -> array | tuple[int, ...]:
        messages = [_message_dict(m) for m in request.messages]
        kwargs = dict(getattr(request, "chat_template_kwargs", None) or {})
        continue_final = bool(getattr(request, "continue_final_message", False))
        text = self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=bool(getattr(request, "add_generation_prompt", True))
            and not continue_final,
            continue_final_message=continue_final,
            tools=getattr(request, "tools", None) and [
                t.model_dump() if hasattr(t, "model_dump") else t for t in request.tools],
            **kwargs,
        )
        return self._encoded(text, bool(getattr(request, "add_special_tokens", False)), packed,
                             getattr(request, "cache_salt", None))
