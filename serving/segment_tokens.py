"""Tokenising a prompt by its special-token segments, with the segments cached.

Hugging Face tokenizers cut the text at added (special) tokens first and run the
normaliser, pre-tokeniser and model on each piece between them independently. So a
prompt's ids are exactly the concatenation of its pieces' ids, and a piece that was
seen before -- a tenant's system prompt between `<|im_start|>system\\n` and
`<|im_end|>` -- need not be encoded again. For a 7k-token system prompt that turns
~10 ms of BPE into a dictionary probe; only the new user turn is encoded.

The equivalence only holds when the added tokens match verbatim (no `lstrip`,
`rstrip`, `single_word`, or matching after normalisation) and when encoding adds no
special tokens of its own (a BOS post-processor); for any other tokenizer
`SegmentEncoder.enabled` is False and every call is a plain encode. Unit tests compare
both paths on the embedded model's tokenizer and on randomised texts.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

# Pieces remembered per encoder: a few thousand tenants' system prompts and few-shot
# blocks. Memory is the pieces' text plus their ids, about 10 bytes per token.
DEFAULT_MAX_PIECES = 4096
# Pieces shorter than this are cheaper to encode than to look up and store.
_MIN_CACHED_CHARS = 256


class SegmentEncoder:
    def __init__(self, tokenizer: Any, *, max_pieces: int = DEFAULT_MAX_PIECES) -> None:
        self._tok = tokenizer
        self._max_pieces = max_pieces
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        # The router encodes on its event loop and in worker threads at once.
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        added = self._verbatim_added_tokens(tokenizer)
        self.enabled = added is not None and max_pieces > 0 and self._adds_no_specials(tokenizer)
        self._ids = added or {}
        self._split = (re.compile("(" + "|".join(re.escape(t) for t in
                                                 sorted(self._ids, key=len, reverse=True)) + ")")
                       if self._ids else None)

    @staticmethod
    def _verbatim_added_tokens(tokenizer: Any) -> dict[str, int] | None:
        decoder = getattr(tokenizer, "added_tokens_decoder", None)
        if decoder is None:
            return None
        tokens: dict[str, int] = {}
        for token_id, added in decoder.items():
            if (getattr(added, "lstrip", False) or getattr(added, "rstrip", False)
                    or getattr(added, "single_word", False)
                    or (getattr(added, "normalized", False) and not getattr(added, "special", False))):
                return None
            tokens[str(added.content)] = int(token_id)
        return tokens

    @staticmethod
    def _adds_no_specials(tokenizer: Any) -> bool:
        probe = "a b"
        return list(tokenizer.encode(probe, add_special_tokens=True)) == list(
            tokenizer.encode(probe, add_special_tokens=False))

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if not self.enabled:
            return list(self._tok.encode(text, add_special_tokens=add_special_tokens))
        pieces = self._split.split(text) if self._split is not None else [text]
        ids: list[int] = []
        for piece in pieces:
            if not piece:
                continue
            special = self._ids.get(piece)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._encode_piece(piece))
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        if len(piece) < _MIN_CACHED_CHARS:
            return list(self._tok.encode(piece, add_special_tokens=False))
        with self._lock:
            cached = self._cache.get(piece)
            if cached is not None:
                self.hits += 1
                self._cache.move_to_end(piece)
                return cached
            self.misses += 1
        ids = list(self._tok.encode(piece, add_special_tokens=False))  # outside the lock
        with self._lock:
            self._cache[piece] = ids
            if len(self._cache) > self._max_pieces:
                self._cache.popitem(last=False)
        return ids
