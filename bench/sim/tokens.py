"""Prompt token ids for the simulator: synthetic and fast, or the engine's own.

The live benchmark tokenises each request with the model's tokenizer and chat
template (``serving.routing.prompt_tokens``), about 0.3-12 ms a request: fine for a few
hundred requests, hours for a million. ``SyntheticTokenizer`` stands in for it:

* text splits into letter runs, single digits and single punctuation marks
  (SmolLM2's tokenizer also splits digits one by one), each mapped to a fixed id
  by a stable hash (``blake2b``, never Python's salted ``hash()``), so ids are
  the same in every process;
* a chat request is framed like SmolLM2's ChatML template: per message
  ``<|im_start|> role \\n content <|im_end|> \\n``, then ``<|im_start|> assistant \\n``.

What matters to routing and caching is kept exactly: equal text gives equal ids,
and requests sharing a system prompt share a token prefix that ends where the
prompt ends. Lengths differ from the real tokenizer's
(docs/benchmarks/simulator.md). Every message but the last (the shared part of a
chat: system prompt, earlier turns) is encoded once while it is in a bounded memo, which
returns the *same* tuple object for the same text; that lets
``prompts.PromptHasher`` memoise a shared prefix by identity. The last message,
new in every request, is encoded without the memo.

``EngineTokenizer`` gives the exact ids of the live benchmark (for calibration on
its small traces); it returns the whole prompt as one part.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Final, Protocol

from bench.trace import TraceRequest

# SmolLM2's vocabulary size; ids below _FIRST_WORD_ID are the framing tokens.
DEFAULT_VOCAB_SIZE: Final[int] = 49_152
_IM_START, _IM_END, _NEWLINE = 1, 2, 3
_FIRST_WORD_ID: Final[int] = 16
_PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
# Shared messages whose ids are kept, in two generations (hot ones stay): every
# system prompt of a workload of thousands of tenants; about 10 KB each.
_MEMO_MESSAGES: Final[int] = 16_384


class PromptTokens(Protocol):
    """Token ids of one trace request, as consecutive parts (messages).

    The concatenation of the parts is the prompt. Parts equal in content are the
    same object while memoised, so a prefix of parts can be recognised by identity.
    """

    def parts(self, request: TraceRequest) -> tuple[tuple[int, ...], ...]: ...


class SyntheticTokenizer:
    """Deterministic word-level token ids with ChatML-like framing."""

    def __init__(self, *, vocab_size: int = DEFAULT_VOCAB_SIZE) -> None:
        if vocab_size <= _FIRST_WORD_ID:
            raise ValueError(f"vocab_size must be > {_FIRST_WORD_ID}, got {vocab_size}")
        self._span = vocab_size - _FIRST_WORD_ID
        self._ids: dict[str, int] = {}
        # Two generations approximate LRU in O(1): hits in ``_old`` move to
        # ``_young``; a full ``_young`` becomes ``_old``, dropping the previous one.
        self._young: dict[tuple[str, str], tuple[int, ...]] = {}
        self._old: dict[tuple[str, str], tuple[int, ...]] = {}
        self._generation = (_IM_START, self.piece_id("assistant"), _NEWLINE)

    def piece_id(self, piece: str) -> int:
        """The id of one piece of text (a word, a digit or a mark)."""
        token = self._ids.get(piece)
        if token is None:
            digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
            token = _FIRST_WORD_ID + int.from_bytes(digest, "big") % self._span
            self._ids[piece] = token
        return token

    def encode(self, text: str) -> tuple[int, ...]:
        pieces = _PIECE.findall(text)
        known = self._ids
        ids = tuple(map(known.get, pieces))  # in C; new pieces come back as None
        if None in ids:
            for piece in set(pieces).difference(known):
                self.piece_id(piece)
            ids = tuple(map(known.__getitem__, pieces))
        return ids  # type: ignore[return-value]

    def message(self, role: str, content: str, *, memo: bool = True) -> tuple[int, ...]:
        key = (role, content)
        tokens = self._young.get(key) if memo else None
        if tokens is None and memo:
            tokens = self._old.get(key)
            if tokens is not None:
                self._remember(key, tokens)
        if tokens is None:
            tokens = (_IM_START, self.piece_id(role), _NEWLINE, *self.encode(content),
                      _IM_END, _NEWLINE)
            if memo:
                self._remember(key, tokens)
        return tokens

    def _remember(self, key: tuple[str, str], tokens: tuple[int, ...]) -> None:
        if len(self._young) >= _MEMO_MESSAGES // 2:
            self._old = self._young
            self._young = {}
        self._young[key] = tokens

    def parts(self, request: TraceRequest) -> tuple[tuple[int, ...], ...]:
        if request.messages is None:
            return (self.encode(request.prompt or ""),)
        *head, last = request.messages
        # The generation prompt joins the last message, so that the shared prefix
        # (every message but the last) is a prefix of parts.
        return (*(self.message(m["role"], m["content"]) for m in head),
                self.message(last["role"], last["content"], memo=False) + self._generation)


class EngineTokenizer:
    """The live benchmark's exact prompt ids (``serving.routing.prompt_tokens``), one part each."""

    def __init__(self, tokenizer_path: str | None = None) -> None:
        from serving.routing.prompt_tokens import PromptTokenizer

        if tokenizer_path is None:
            from serving.models.default import ensure_default_model

            tokenizer_path = str(ensure_default_model())
        self._tokenizer = PromptTokenizer(tokenizer_path)

    def parts(self, request: TraceRequest) -> tuple[tuple[int, ...], ...]:
        from types import SimpleNamespace

        parsed = (SimpleNamespace(messages=[dict(m) for m in request.messages])
                  if request.messages is not None else SimpleNamespace(prompt=request.prompt))
        return (self._tokenizer.token_ids(parsed) or (),)


def prefix_text(request: TraceRequest) -> str:
    """The text Ray's ``PrefixCacheAffinityRouter`` matches: the message contents
    concatenated with nothing between them (its ``_normalize_prompt_to_string``)."""
    if request.messages is None:
        return request.prompt or ""
    return "".join(_content_text(m) for m in request.messages)


def _content_text(message: Mapping[str, str]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""
