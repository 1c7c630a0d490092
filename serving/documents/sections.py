"""Sections: a document longer than the context window, cut into contiguous parts that
each fit the window with room for a question and its answer.

Each section is a cached anchor of its own: its system message (the instruction, the
document's name with the section's place in it, and the section's text) is registered
with the prefix registry like a whole document's, so the registry prewarms it, the
ring spreads the sections' block hashes over the replicas, and the cache-aware router
sends every question that starts with a section to the replica holding it. A question
about a section is then that exact system message plus the question: every full block
of its prompt but the last is cached.

- ``cut``: greedy, in document order. A section is a run of consecutive chunks whose
  tokens fit ``budget_tokens``; it ends on a chunk boundary, so on a paragraph or
  sentence boundary. The next section starts with the previous one's last chunk, so
  every two adjacent chunks are whole together in some section: a paragraph longer
  than a chunk (cut by the chunker into consecutive chunks) or a fact on a chunk
  boundary is never split between two sections. Without that shared chunk, a question
  about a passage on a section boundary is answered from half of it (the long-document
  benchmark's most common miss); the shared chunk costs each section one chunk of its
  budget. A section's tokens are estimated
  as its first chunk's plus the *fresh* tokens (those not repeated from the chunk
  before) of the others; the service checks each rendered section exactly and cuts
  again below any that does not fit.
- ``scores`` / ``pick_legs``: a section scores its best chunk's similarity to the
  question (the max: a question about one passage should not be diluted by the rest
  of its section, as a mean would be). The chunks within ``margin`` of the best chunk
  are the ones the embedding cannot tell apart from it; the legs are the fewest
  sections that hold them all (greedy set cover: the section holding most of them,
  ties to the higher score, then document order; then again for those left), at
  most ``max_legs``. So a question whose top chunks lie in one section -- a passage
  over two chunks, which the shared boundary chunk keeps in one section -- costs one
  leg, and one whose top chunks lie apart is answered from each part and the answers
  combined (``legs.py``).
- ``PAD_UNITS``: an anchor ends on a KV block boundary. The engine caches whole
  blocks only, so the tokens of an anchor's last, partial block would be prefilled
  again by every question; a section's system message is therefore padded with
  whitespace to a multiple of the block size (the caller measures it exactly), and a
  question prefills only its own tokens. Sections are cut a block smaller so the
  padding always fits.
- ``messages``: a leg's prompt, the section's system message, earlier turns, then the
  question; ``last_chunk`` below the section's own trims its tail (never its head, so
  the prompt still starts with the anchor's blocks) when the question and answer need
  more than the reserve.

Pure and deterministic. Cost: O(chunks) per cut, per ranking and per leg choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from serving.documents.assembly import rendered_history, system_message
from serving.documents.chunking import Chunk
from serving.prefixes.store import PrefixKey


class SectionError(ValueError):
    """A chunk alone does not fit a section's budget."""


@dataclass(frozen=True, kw_only=True)
class Section:
    index: int
    first_chunk: int
    last_chunk: int  # inclusive
    estimated_tokens: int


@dataclass(kw_only=True)
class SectionAnchor:
    """One section as registered: its system message's tokens and its prefix."""

    section: Section
    count: int  # sections in the document (part of the label)
    token_start: int  # the section's span in the document's tokens (approximate at the
    token_end: int    # boundaries: token counts of adjacent pieces are summed)
    pad: str = ""  # whitespace after the text: the system message ends on a block boundary
    token_ids: tuple[int, ...] = ()  # of its system message, as the router hashes them
    prefix_key: PrefixKey | None = None  # None: shorter than one KV block
    cacheable_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class Leg:
    """One section answering a question: its prompt, sent as a chat request."""

    section: int
    last_chunk: int  # the section's own, or below it when its tail was trimmed
    messages: list[dict[str, str]]


class SectionedDocument(Protocol):
    """What a leg needs of a document (service.py's ``Document``)."""

    name: str
    text: str
    chunks: tuple[Chunk, ...]
    sections: tuple[SectionAnchor, ...]
    fresh_tokens: tuple[int, ...]


def fresh_tokens(text: str, chunks: Sequence[Chunk], count: Any) -> list[int]:
    """Tokens each chunk adds after the one before (its overlap not counted again);
    one batched count. ``count``: the service's ``TokenCounter``."""
    pieces = [text[c.start:c.end] if i == 0 else text[max(chunks[i - 1].end, c.start):c.end]
              for i, c in enumerate(chunks)]
    return count(pieces)


def cut(chunks: Sequence[Chunk], fresh: Sequence[int], *, budget_tokens: int) -> list[Section]:
    """Runs of consecutive chunks, each of at most ``budget_tokens`` estimated tokens,
    each starting with the one before's last chunk (see the module docstring)."""
    for i, chunk in enumerate(chunks):
        if chunk.tokens > budget_tokens:
            raise SectionError(f"chunk {i} ({chunk.tokens} tokens) exceeds a section's "
                               f"{budget_tokens} tokens")
    sections: list[Section] = []
    first = 0
    while first < len(chunks):
        last, total = first, chunks[first].tokens
        while last + 1 < len(chunks) and total + fresh[last + 1] <= budget_tokens:
            last += 1
            total += fresh[last]
        if sections and last == first == sections[-1].last_chunk:
            first += 1  # the shared chunk leaves no room for the next: start after it
            continue
        sections.append(Section(index=len(sections), first_chunk=first, last_chunk=last,
                                estimated_tokens=total))
        if last == len(chunks) - 1:
            break
        first = last if last > first else last + 1
    return sections


def token_spans(sections: Sequence[Section], chunks: Sequence[Chunk],
                fresh: Sequence[int]) -> list[tuple[int, int]]:
    """(first token, end token) of each section in the document: fresh tokens summed."""
    starts = [0]
    for f in fresh:
        starts.append(starts[-1] + f)
    # A chunk's start lies its overlap before the end of the fresh tokens before it.
    return [(starts[s.first_chunk] - (chunks[s.first_chunk].tokens - fresh[s.first_chunk]),
             starts[s.last_chunk + 1]) for s in sections]


def section_text(text: str, chunks: Sequence[Chunk], section: Section,
                 last_chunk: int | None = None) -> str:
    last = section.last_chunk if last_chunk is None else last_chunk
    return text[chunks[section.first_chunk].start:chunks[last].end].strip()


def label(name: str, index: int, count: int) -> str:
    return f"{name} (part {index + 1} of {count})"


# Whitespace that pads an anchor to a block boundary, tried in order: the first whose
# repeats add one token each lands exactly (" \n" on BPE tokenizers, where newlines
# alone merge; "\n" on character-level ones). The caller measures.
PAD_UNITS = (" \n", "\n")


def anchor_message(name: str, text: str, chunks: Sequence[Chunk], section: Section,
                   count: int, last_chunk: int | None = None, pad: str = "") -> dict[str, str]:
    """The section's system message: registered whole (with its ``pad``), trimmed only
    by ``messages``."""
    return system_message(label(name, section.index, count),
                          section_text(text, chunks, section, last_chunk) + pad)


def messages(*, name: str, text: str, chunks: Sequence[Chunk], section: Section, count: int,
             question: str, history: Sequence[Mapping[str, str]] = (),
             last_chunk: int | None = None, pad: str = "") -> list[dict[str, str]]:
    """A leg's chat messages: the section's anchor, earlier turns, the question. A
    trimmed leg (``last_chunk`` below the section's) is sent without the ``pad``."""
    trimmed = last_chunk is not None and last_chunk != section.last_chunk
    return [anchor_message(name, text, chunks, section, count, last_chunk,
                           "" if trimmed else pad),
            *rendered_history(history), {"role": "user", "content": f"Question: {question}"}]


def scores(similarities: Sequence[float], sections: Sequence[Section]) -> list[float]:
    """Each section's best chunk similarity to the question."""
    return [max(float(similarities[i]) for i in range(s.first_chunk, s.last_chunk + 1))
            for s in sections]


def pick_legs(similarities: Sequence[float], sections: Sequence[Section], *, max_legs: int,
              margin: float) -> tuple[int, ...]:
    """The sections that answer, first the one holding most of the chunks within
    ``margin`` of the best chunk (see the module docstring), at most ``max_legs``."""
    if not sections:
        return ()
    section_scores = scores(similarities, sections)
    best = max(section_scores)
    wanted = {i for s in sections for i in range(s.first_chunk, s.last_chunk + 1)
              if float(similarities[i]) >= best - margin}
    legs: list[int] = []
    while wanted and len(legs) < max_legs:
        held = {k: sum(s.first_chunk <= i <= s.last_chunk for i in wanted)
                for k, s in enumerate(sections) if k not in legs}
        pick = max(held, key=lambda k: (held[k], section_scores[k], -k))
        legs.append(pick)
        wanted -= set(range(sections[pick].first_chunk, sections[pick].last_chunk + 1))
    return tuple(legs)


def trim(chunks_fresh: Sequence[int], section: Section, last_chunk: int, over_tokens: int) -> int:
    """The last chunk to keep so that about ``over_tokens`` fewer are sent; never below
    the section's first chunk (the caller gives up when it cannot trim further)."""
    dropped = 0
    while last_chunk > section.first_chunk and dropped < over_tokens:
        dropped += chunks_fresh[last_chunk]
        last_chunk -= 1
    return last_chunk
