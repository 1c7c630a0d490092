"""Tokenising a prompt by its special-token segments, with the segments cached.

Hugging Face tokenizers cut the text at added (special) tokens first and run the
normaliser, pre-tokeniser and model on each piece between them independently. So a
prompt's ids are exactly the concatenation of its pieces' ids, and a piece that was
seen before -- a tenant's system prompt between `<|im_start|>system\\n` and
`<|im_end|>` -- need not be encoded again. For a 7k-token system prompt that turns
~10 ms of BPE into a dictionary probe; only the new user turn is encoded.

The cache is keyed by the request's cache salt as well as the piece: a hit is faster
than a miss, so a cache shared across tenants would let one tenant time whether
another had sent a text. The ingress sets every request's salt from its tenant
(serving/tenants/identity.py), so a piece is only ever found cached by the tenant
that sent it. The memory bound is shared.

The equivalence only holds when the added tokens match verbatim (no `lstrip`,
`rstrip`, `single_word`, or matching after normalisation) and when encoding adds no
special tokens of its own (a BOS post-processor); for any other tokenizer
`SegmentEncoder.enabled` is False and every call is a plain encode. Unit tests compare
both paths on the embedded model's tokenizer and on randomised texts.
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from typing import Any

# Tokens remembered per encoder, over all cached pieces: thousands of tenants' system
# prompts. Memory is the pieces' text plus 4 bytes per id: about 8 MB per 1M tokens.
DEFAULT_MAX_TOKENS = 2_000_000
# Pieces are cached on their second sighting only, so one-off user turns never evict
# the system prompts that repeat; this many recent first sightings are remembered.
_SEEN_PIECES = 16_384
# Pieces shorter than this are cheaper to encode than to look up and store.
_MIN_CACHED_CHARS = 256


class SegmentEncoder:
    def __init__(self, tokenizer: Any, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self._tok = tokenizer
        self._max_tokens = max_tokens
        self._cached_tokens = 0
        self._cache: OrderedDict[tuple[str | None, str], array] = OrderedDict()
        self._seen: OrderedDict[int, None] = OrderedDict()
        # The router encodes on its event loop and in worker threads at once.
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        added = self._verbatim_added_tokens(tokenizer)
        self.enabled = added is not None and max_tokens > 0 and self._adds_no_specials(tokenizer)
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

    def encode(self, text: str, *, add_special_tokens: bool = False,
               salt: str | None = None) -> list[int]:
        """``text``'s ids; cached pieces are found only under the same ``salt``."""
        if not self.enabled:
            return list(self._tok.encode(text, add_special_tokens=add_special_tokens))
        return self._assemble(text, [], salt)

    def encode_packed(self, text: str, *, add_special_tokens: bool = False,
                      salt: str | None = None) -> array:
        """``encode`` as an ``array("I")``: what the router hashes. A cached piece is
        then copied in one ``memcpy`` instead of being unpacked into ints, and the
        block hasher needs no pack of its own (router/hashing.py)."""
        if not self.enabled:
            return array("I", self._tok.encode(text, add_special_tokens=add_special_tokens))
        return self._assemble(text, array("I"), salt)

    def _assemble(self, text: str, ids: Any, salt: str | None) -> Any:
        """Append ``text``'s ids to ``ids`` (a list or an ``array("I")``) piece by piece."""
        pieces = self._split.split(text) if self._split is not None else [text]
        for piece in pieces:
            if not piece:
                continue
            special = self._ids.get(piece)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._encode_piece(piece, salt))
        return ids

    def _encode_piece(self, piece: str, salt: str | None) -> Any:
        if len(piece) < _MIN_CACHED_CHARS:
            return self._tok.encode(piece, add_special_tokens=False)
        entry = (salt, piece)
        # In-process only (never persisted nor shared): Python's hash serves.
        key = hash(entry)
        with self._lock:
            cached = self._cache.get(entry)
            if cached is not None:
                self.hits += 1
                self._cache.move_to_end(entry)
                return cached
            self.misses += 1
            admit = key in self._seen
            if not admit:
                self._seen[key] = None
                if len(self._seen) > _SEEN_PIECES:
                    self._seen.popitem(last=False)
        ids = self._tok.encode(piece, add_special_tokens=False)  # outside the lock
        if admit and len(ids) <= self._max_tokens:
            packed = array("I", ids)
            with self._lock:
                if entry not in self._cache:
                    self._cache[entry] = packed
                    self._cached_tokens += len(packed)
                    self._seen.pop(key, None)
                while self._cached_tokens > self._max_tokens:
                    _, evicted = self._cache.popitem(last=False)
                    self._cached_tokens -= len(evicted)
        return ids
