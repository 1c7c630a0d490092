"""Assemble a question's context window from a document's chunks.

Prefix caching serves a prompt's longest cached *token prefix*, so the order of a
context decides how much of it later questions find cached. The layout:

    system: INSTRUCTION, the document's name, then its *anchor*: the whole document
            (a document longer than the window is cut into sections instead, each
            an anchor of its own: ``sections.py``). Fixed per document: registered
            as a prefix, prewarmed, and the first blocks every question about the
            document shares; the router hashes them, so all those questions go to
            the replica holding it.
    user:   the question; when the question and its answer leave no room for the
            whole document, the anchor shrinks to its lead (the first chunks up to
            ``lead_tokens``, a head of the prewarmed whole) and the user message
            holds further excerpts -- chunks picked by similarity to the question,
            *placed in document order* -- before the question.

Selection (``select``): the whole document when its tokens fit the budget (window
minus question, answer and template tokens); otherwise the lead plus the best-ranked
other chunks, at most ``top_k``, each taken if it still fits, then sorted by index.
Two related questions that pick overlapping chunks thus share the system message and
every excerpt up to the first chunk they differ in; in similarity order they would
share only the system message (unless their best chunk is the same). The ``naive``
order (``Order.SIMILARITY``: no anchor, chunks best first) is kept for the benchmark.

A conversation about the document (a chat request naming it) puts its earlier turns
between the system message and the last user message (``rendered_history``).

Rendering merges overlapping and adjacent chunk spans back into the original text
(overlap is not repeated) and clips excerpts to start after the lead. Deterministic:
the same chunks, ranking and budget give the same messages. Cost: O(chunks).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serving.documents.chunking import Chunk

INSTRUCTION = "Answer the question using only the document below."
NAIVE_INSTRUCTION = "Answer the question using only the excerpts below."
EXCERPTS_HEADING = "Further excerpts of the document:"
GAP = "\n\n[...]\n\n"


class Order(str, enum.Enum):
    DOCUMENT = "document"      # anchor + excerpts in document order (the cached path)
    SIMILARITY = "similarity"  # excerpts best first, no anchor (the naive baseline)


class Mode(str, enum.Enum):
    WHOLE = "whole"
    EXCERPTS = "excerpts"
    SECTIONS = "sections"  # a document longer than the window: sections.py


@dataclass(frozen=True, kw_only=True)
class Selection:
    mode: Mode
    order: Order
    # Chunk indices in the order they are rendered (lead excluded).
    excerpts: tuple[int, ...]
    # Estimated context tokens (anchor + excerpts, chunk counts summed).
    tokens: int


def lead_chunks(chunks: Sequence[Chunk], lead_tokens: int) -> int:
    """How many leading chunks form the lead: at least one, then while they fit."""
    count, total = 0, 0
    for chunk in chunks:
        if count and total + chunk.tokens > lead_tokens:
            break
        total += chunk.tokens
        count += 1
    return count


def select(*, chunks: Sequence[Chunk], ranked: Sequence[int], document_tokens: float,
           lead_count: int, lead_tokens: int, budget_tokens: int, top_k: int,
           order: Order = Order.DOCUMENT) -> Selection:
    """Which chunks the context holds. ``ranked``: chunk indices, most similar first.
    ``lead_tokens``: the lead's exact token count. ``document_tokens`` infinite: never
    the whole document."""
    if order is Order.DOCUMENT and document_tokens <= budget_tokens:
        return Selection(mode=Mode.WHOLE, order=order, excerpts=(), tokens=int(document_tokens))
    lead = set(range(lead_count)) if order is Order.DOCUMENT else set()
    used = lead_tokens if order is Order.DOCUMENT else 0
    picked: list[int] = []
    for index in ranked:
        if len(picked) >= top_k:
            break
        if index in lead or index in picked:
            continue
        if used + chunks[index].tokens <= budget_tokens:
            picked.append(index)
            used += chunks[index].tokens
    if order is Order.DOCUMENT:
        picked.sort()
    return Selection(mode=Mode.EXCERPTS, order=order, excerpts=tuple(picked), tokens=used)


def without_last_ranked(selection: Selection, ranked: Sequence[int],
                        chunks: Sequence[Chunk]) -> Selection:
    """The selection minus its lowest-ranked excerpt (order kept)."""
    position = {index: rank for rank, index in enumerate(ranked)}
    worst = max(selection.excerpts, key=lambda i: position[i])
    kept = tuple(i for i in selection.excerpts if i != worst)
    return Selection(mode=selection.mode, order=selection.order, excerpts=kept,
                     tokens=selection.tokens - chunks[worst].tokens)


def render_spans(text: str, spans: Sequence[tuple[int, int, int]]) -> str:
    """The text of ``spans`` -- (chunk index, start, end) -- in the given order.
    A span that overlaps the previous one or follows it in the document (the next
    chunk index) merges with it into one passage of the original text; other
    passages are joined by a gap marker."""
    passages: list[list[int]] = []  # [last chunk index, start, end]
    for index, start, end in spans:
        if passages and (passages[-1][1] <= start <= passages[-1][2]
                         or index == passages[-1][0] + 1):
            passages[-1] = [index, passages[-1][1], max(end, passages[-1][2])]
        else:
            passages.append([index, start, end])
    texts = (text[a:b].strip() for _, a, b in passages)
    return GAP.join(t for t in texts if t)


def anchor_text(text: str, chunks: Sequence[Chunk], lead_count: int, mode: Mode) -> str:
    """The fixed head of the document's context: all of it, or its lead."""
    if mode is Mode.WHOLE or lead_count >= len(chunks):
        return text.strip()
    return text[:chunks[lead_count - 1].end].strip()


def system_message(name: str, anchor: str) -> dict[str, str]:
    return {"role": "system", "content": f"{INSTRUCTION}\n\nDocument: {name}\n\n{anchor}"}


def rendered_history(history: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Earlier turns of a conversation about the document, rendered as their questions
    were: a user turn as ``Question: ...`` (the form a question has without excerpts),
    an assistant turn as it is. A whole-document conversation thus resends exactly the
    prompt of its previous turn plus the answer, and that prefix is cached."""
    return [{"role": "user", "content": f"Question: {m['content']}"} if m["role"] == "user"
            else {"role": m["role"], "content": m["content"]} for m in history]


def messages(*, name: str, text: str, chunks: Sequence[Chunk], lead_count: int,
             selection: Selection, question: str,
             history: Sequence[Mapping[str, str]] = ()) -> list[dict[str, str]]:
    """The chat messages for one question (after ``history``, earlier turns)."""
    spans = [(i, chunks[i].start, chunks[i].end) for i in selection.excerpts]
    turns = rendered_history(history)
    if selection.order is Order.SIMILARITY:
        body = render_spans(text, spans)
        return [{"role": "system", "content": NAIVE_INSTRUCTION}, *turns,
                {"role": "user", "content": f"Excerpts:\n\n{body}\n\nQuestion: {question}"}]
    system = system_message(name, anchor_text(text, chunks, lead_count, selection.mode))
    if not spans:
        return [system, *turns, {"role": "user", "content": f"Question: {question}"}]
    lead_end = chunks[lead_count - 1].end if lead_count else 0
    clipped = [(i, max(a, lead_end), b) for i, a, b in spans if b > lead_end]
    body = render_spans(text, clipped)
    return [system, *turns, {"role": "user",
                             "content": f"{EXCERPTS_HEADING}\n\n{body}\n\nQuestion: {question}"}]
