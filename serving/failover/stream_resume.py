"""Continuing an OpenAI stream on another replica after its replica failed mid-way.

The client holds one SSE stream; the engine behind it may change. This module keeps
what the client has been sent (the text of choice 0, the completion tokens, the
stream's id and creation time) and, after a failure, builds the continuation request
and rewrites its chunks so the client sees one stream:

    completions   prompt' = prompt + text so far
    chat          messages' = messages + {assistant: text so far},
                  continue_final_message=True, add_generation_prompt=False
                  (vLLM then renders the assistant turn open and generates its rest)
    both          max_tokens' = max_tokens - tokens sent; min_tokens likewise

Rewriting a continuation's chunks: the original `id` and `created`; no second `role`
delta; no error chunk or `[DONE]` of a failed attempt; exactly one `[DONE]`; and usage
(only where the client asked for it) with the original prompt's `prompt_tokens` and
the completion tokens of every attempt added up.

Token counts come from the engine: the upstream request always asks for per-chunk
usage (`stream_options.continuous_usage_stats`), which is stripped again unless the
client asked for it. Cost: one JSON parse and dump per chunk, O(chunk size).

Limits (docs/operations/failover.md): one choice (`n` = 1) and plain text only (no tools, no
structured output, no `echo`, a single text prompt); the continuation re-tokenises
the text so far, so a token boundary may differ from the first engine's; with
temperature > 0 the continuation samples anew from the same text (and a `seed` does
not reproduce the uninterrupted stream); logprobs cover each attempt's own tokens.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from vllm.entrypoints.generate.base.protocol import StreamOptions

DONE_EVENT = "data: [DONE]\n\n"


class StreamBroken(Exception):
    """The upstream stream carried a server-side error chunk instead of its rest.
    `events`: what the same item held before the error, to be sent on."""

    def __init__(self, message: str, events: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.events = events or []


def sse_events(item: Any) -> Iterable[str]:
    """The `data:` payloads of one upstream item: an SSE string, or a list of them
    (ray.serve.llm batches stream chunks)."""
    parts = item if isinstance(item, list) else [item]
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"expected SSE text, got {type(part).__name__}")
        for event in part.split("\n\n"):
            event = event.strip()
            if event.startswith("data:"):
                yield event[len("data:"):].strip()


def _dump(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def error_event(message: str, *, code: int = 500) -> str:
    """An OpenAI-shaped error chunk, for a stream failover could not finish."""
    return _dump({"error": {"message": message, "type": "InternalServerError",
                            "param": None, "code": code}})


def resume_blocker(body: Any, kind: str) -> str | None:
    """Why a broken stream of this request cannot be continued, or None if it can."""
    if (getattr(body, "n", 1) or 1) != 1:
        return "n > 1"
    if getattr(body, "best_of", None) not in (None, 1):
        return "best_of > 1"
    if getattr(body, "echo", False):
        return "echo"
    if getattr(body, "tools", None) and getattr(body, "tool_choice", None) != "none":
        return "tools"
    if getattr(body, "response_format", None) is not None and \
            getattr(body.response_format, "type", "text") != "text":
        return "structured output"
    if getattr(body, "structured_outputs", None) is not None:
        return "structured output"
    if kind == "completions" and _single_prompt(body.prompt) is None:
        return "prompt is not a single text"
    return None


def _single_prompt(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    return None


def _stream_options(body: Any) -> tuple[bool, bool]:
    opts = getattr(body, "stream_options", None)
    if opts is None:
        return False, False
    return bool(getattr(opts, "include_usage", False)), \
        bool(getattr(opts, "continuous_usage_stats", False))


class StreamResume:
    """State of one client stream across attempts; `kind` is `chat` or `completions`."""

    def __init__(self, body: Any, kind: str) -> None:
        if kind not in ("chat", "completions"):
            raise ValueError(f"kind must be 'chat' or 'completions', got {kind!r}")
        self._body = body
        self._kind = kind
        self._client_usage, self._client_continuous = _stream_options(body)
        self.blocker = resume_blocker(body, kind)
        # What the client has been sent.
        self.text = ""
        self.sent_tokens = 0
        self.started = False
        self.finished = False
        self.attempt = 0
        self._id: str | None = None
        self._created: int | None = None
        # The first attempt's prompt accounting, which every later usage reports.
        self._prompt_tokens: int | None = None
        self._prompt_details: Any = None
        # Completion tokens of earlier attempts (the current one's come in its usage).
        self._base_tokens = 0
        self._continued = False

    @property
    def resumed(self) -> bool:
        """Some attempt continued output an earlier one had started."""
        return self._continued

    def upstream_body(self) -> Any:
        """The request of the first attempt: the client's, asking for per-chunk usage."""
        return self._body.model_copy(update={"stream_options": StreamOptions(
            include_usage=True, continuous_usage_stats=True)})

    def next_attempt(self) -> Any:
        """The request of the next attempt, after the current one failed."""
        self.attempt += 1
        self._base_tokens = self.sent_tokens
        body = self.upstream_body()
        if not self.started:
            return body
        self._continued = True
        if not self.text:
            # Only the role chunk went out: the request itself, rewritten into the stream.
            return body
        update: dict[str, Any] = {}
        for field in ("max_tokens", "max_completion_tokens"):
            limit = getattr(body, field, None)
            if limit is not None:
                update[field] = max(1, limit - self.sent_tokens)
        if getattr(body, "min_tokens", 0):
            update["min_tokens"] = max(0, body.min_tokens - self.sent_tokens)
        if self._kind == "completions":
            update["prompt"] = _single_prompt(body.prompt) + self.text
            update["echo"] = False
        else:
            update.update(_chat_continuation(body, self.text))
        return body.model_copy(update=update)

    def exhausted_budget(self) -> bool:
        """Every token the client asked for was sent; only the ending is missing."""
        limit = getattr(self._body, "max_completion_tokens", None) or \
            getattr(self._body, "max_tokens", None)
        return limit is not None and self.started and self.sent_tokens >= limit

    def consume(self, item: Any) -> list[str]:
        """Rewrite one upstream item into the events to send on; raises StreamBroken
        on a server error chunk, carrying the item's events before it."""
        out = []
        for payload in sse_events(item):
            if payload == "[DONE]":
                self.finished = True
                out.append(DONE_EVENT)
                continue
            obj = json.loads(payload)
            if "error" in obj:
                error = obj["error"] or {}
                code = error.get("code")
                if not isinstance(code, int) or code >= 500:
                    raise StreamBroken(str(error.get("message") or "engine error"), out)
                out.append(_dump(obj))
                continue
            event = self._chunk(obj)
            if event is not None:
                out.append(event)
        return out

    def closing_events(self) -> list[str]:
        """The end of a stream whose last tokens were sent before its replica failed."""
        events = []
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if self._kind == "chat":
            choice["delta"] = {}
        else:
            choice["text"] = ""
        events.append(self._with_identity({"object": self._object(), "choices": [choice]}))
        if self._client_usage:
            events.append(self._with_identity({"object": self._object(), "choices": [],
                                               "usage": self._closing_usage()}))
        return [*events, DONE_EVENT]

    # --- internals -----------------------------------------------------------------

    def _object(self) -> str:
        return "chat.completion.chunk" if self._kind == "chat" else "text_completion"

    def _with_identity(self, obj: dict[str, Any]) -> str:
        obj.setdefault("id", self._id)
        obj.setdefault("created", self._created)
        obj.setdefault("model", getattr(self._body, "model", None))
        return _dump(obj)

    def _closing_usage(self) -> dict[str, Any]:
        prompt = self._prompt_tokens or 0
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": self.sent_tokens,
                                 "total_tokens": prompt + self.sent_tokens}
        if self._prompt_details is not None:
            usage["prompt_tokens_details"] = self._prompt_details
        return usage

    def _usage(self, upstream: dict[str, Any], completion: int) -> dict[str, Any]:
        """An upstream usage object as the client's stream reports it."""
        if not self._continued:
            return upstream
        usage = dict(upstream)
        prompt = self._prompt_tokens or 0
        usage.update(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)
        if self._prompt_details is not None:
            usage["prompt_tokens_details"] = self._prompt_details
        return usage

    def _chunk(self, obj: dict[str, Any]) -> str | None:
        usage = obj.get("usage")
        attempt_tokens = int(usage.get("completion_tokens") or 0) if usage else None
        if self._id is None:
            self._id, self._created = obj.get("id"), obj.get("created")
        if usage and not self._continued:
            if self._prompt_tokens is None:
                self._prompt_tokens = int(usage.get("prompt_tokens") or 0)
            if usage.get("prompt_tokens_details") is not None:
                self._prompt_details = usage["prompt_tokens_details"]
        if self._continued:
            obj["id"], obj["created"] = self._id, self._created
        choices = obj.get("choices") or []
        keep = []
        for choice in choices:
            if self._continued and self._kind == "chat":
                delta = choice.get("delta") or {}
                delta.pop("role", None)
                if not any(v not in (None, "", []) for v in delta.values()) and \
                        choice.get("finish_reason") is None:
                    continue  # the continuation's opening role chunk
            if choice.get("index", 0) == 0:
                piece = (choice.get("delta") or {}).get("content") if self._kind == "chat" \
                    else choice.get("text")
                self.text += piece or ""
            keep.append(choice)
        if attempt_tokens is not None:
            self.sent_tokens = self._base_tokens + attempt_tokens
        if usage is not None:
            obj["usage"] = self._usage(usage, self._base_tokens + (attempt_tokens or 0))
        if choices and not keep:
            return None
        obj["choices"] = keep
        if not choices:
            # The final usage-only chunk: the client's only if it asked for usage.
            if not self._client_usage:
                return None
        elif usage is not None and not self._client_continuous:
            del obj["usage"]
        self.started = True
        return _dump(obj)


def _chat_continuation(body: Any, text: str) -> dict[str, Any]:
    messages = copy.deepcopy(list(body.messages))
    last = messages[-1] if messages else None
    if getattr(body, "continue_final_message", False) and isinstance(last, dict) \
            and last.get("role") == "assistant" and isinstance(last.get("content"), str):
        # The client already opened the assistant turn: extend it.
        last["content"] = last["content"] + text
    else:
        messages.append({"role": "assistant", "content": text})
    return {"messages": messages, "continue_final_message": True,
            "add_generation_prompt": False}
