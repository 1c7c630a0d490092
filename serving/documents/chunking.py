"""Split a document into overlapping chunks along its own boundaries.

Algorithm (a sliding window over boundary-respecting units):
1. Units: the document's paragraphs (split at blank lines). A paragraph longer than
   ``chunk_tokens`` is split into sentences (after ``.``, ``!`` or ``?`` followed by
   whitespace); a sentence still longer is cut between words, the last resort.
2. Window: consecutive units are packed into a chunk while their tokens fit
   ``chunk_tokens`` (a single unit always makes a chunk). The next chunk starts by
   repeating the trailing units of the previous one whose tokens add up to at most
   ``overlap_tokens``, so a fact cut by a chunk boundary is whole in one of them,
   and every chunk starts and ends on a unit boundary (never mid-sentence unless
   a sentence alone exceeds the window).
3. A chunk is a character span of the original text, so chunks are rendered from
   the document itself (adjacent chunks merge back into the exact original text).

Tokens are counted with an injected batch counter: the serving model's tokenizer in
the service (windows are then sized in the units the context window is measured in),
a word counter in tests. A chunk's ``tokens`` is its span counted exactly.
Cost: two batched tokenisations of the document (units, then chunks: the overlap is
counted twice), O(tokens); no quadratic re-counting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Counts the tokens of each text, in one batch.
TokenCounter = Callable[[Sequence[str]], list[int]]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True, kw_only=True)
class Chunk:
    index: int
    start: int  # character offsets into the document text: text[start:end]
    end: int
    tokens: int


@dataclass(frozen=True, kw_only=True)
class _Unit:
    start: int
    end: int
    tokens: int


def _spans(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[tuple[int, int]]:
    """Non-blank pieces of text[start:end] between matches of ``separator``."""
    out: list[tuple[int, int]] = []
    pos = start
    for match in separator.finditer(text, start, end):
        out.append((pos, match.start()))
        pos = match.end()
    out.append((pos, end))
    trimmed = []
    for a, b in out:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            trimmed.append((a, b))
    return trimmed


def _units(text: str, chunk_tokens: int, count: TokenCounter) -> list[_Unit]:
    paragraphs = _spans(text, 0, len(text), _PARAGRAPH_BREAK)
    sizes = count([text[a:b] for a, b in paragraphs])
    units: list[_Unit] = []
    for (a, b), size in zip(paragraphs, sizes):
        if size <= chunk_tokens:
            units.append(_Unit(start=a, end=b, tokens=size))
            continue
        sentences = _spans(text, a, b, _SENTENCE_END)
        for (sa, sb), ssize in zip(sentences, count([text[x:y] for x, y in sentences])):
            if ssize <= chunk_tokens:
                units.append(_Unit(start=sa, end=sb, tokens=ssize))
            else:
                units.extend(_word_pieces(text, sa, sb, chunk_tokens, count))
    return units


def _word_pieces(text: str, start: int, end: int, chunk_tokens: int,
                 count: TokenCounter) -> list[_Unit]:
    """A sentence longer than the window, cut between words (word tokens summed: a
    slight overestimate, since a word at a piece's start loses its leading space)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]
    sizes = count([" " + text[a:b] for a, b in words])
    pieces: list[_Unit] = []
    piece_start, total = words[0][0], 0
    last_end = words[0][1]
    for (a, b), size in zip(words, sizes):
        if total and total + size > chunk_tokens:
            pieces.append(_Unit(start=piece_start, end=last_end, tokens=total))
            piece_start, total = a, 0
        total += size
        last_end = b
    pieces.append(_Unit(start=piece_start, end=last_end, tokens=total))
    return pieces


def chunk_document(text: str, *, chunk_tokens: int, overlap_tokens: int,
                   count: TokenCounter) -> list[Chunk]:
    """The document's chunks in document order; empty for blank text."""
    if chunk_tokens < 1 or not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(f"need chunk_tokens >= 1 and 0 <= overlap_tokens < chunk_tokens, "
                         f"got {chunk_tokens}, {overlap_tokens}")
    units = _units(text, chunk_tokens, count)
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and (j == i or total + units[j].tokens <= chunk_tokens):
            total += units[j].tokens
            j += 1
        spans.append((units[i].start, units[j - 1].end))
        if j == len(units):
            break
        # Back up over trailing units that fit the overlap; k > i keeps progress.
        k, back = j, 0
        while k - 1 > i and back + units[k - 1].tokens <= overlap_tokens:
            back += units[k - 1].tokens
            k -= 1
        i = k
    sizes = count([text[a:b] for a, b in spans])
    return [Chunk(index=n, start=a, end=b, tokens=size)
            for n, ((a, b), size) in enumerate(zip(spans, sizes))]
