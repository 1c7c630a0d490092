"""Grounding of a document answer: did the context the service used hold the passage
the question is about? Judged from the answer's ``document`` object, never from the
model's prose (a small model's wording says little about what it was shown).

What the ``document`` object says, by revision and mode:
- ``mode: "whole"``: the whole document was the context: grounded.
- ``sections`` (sectioned documents): each used section's character span
  (``chars``, the last chunk a trimmed leg kept): grounded when their union covers
  the passage.
- ``mode: "excerpts"`` (the naive order, and before sections the long-document path):
  the first ``lead_chunks`` chunks and the ``chunks`` excerpts, by index only. Their
  character spans come from chunking the uploaded text here as the service does
  (``chunk_spans``: the same chunker, the served model's tokenizer, the service's
  chunk sizes), trusted only when the chunk count matches the one the upload
  reported; without them grounding is unknown (None), never guessed.

Cost: O(chunks used) per answer; ``chunk_spans`` tokenises each document twice.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bench.documents_qa import LongDocument
from serving.documents.chunking import TokenCounter, chunk_document

Span = tuple[int, int]  # character offsets into the uploaded text: text[start:end]


def passage_spans(document: LongDocument) -> list[Span]:
    """Each passage's span in ``document.text`` (passage i is paragraph i + 1)."""
    spans, pos = [], 0
    for i, paragraph in enumerate(document.text.split("\n\n")):
        if i:
            spans.append((pos, pos + len(paragraph)))
        pos += len(paragraph) + 2
    return spans


def context_spans(meta: Mapping[str, Any], chunk_spans: Sequence[Span] | None
                  ) -> list[Span] | None:
    """The character spans an answer's context held; None when the response does not
    say (or the chunks' places are unknown)."""
    if meta.get("mode") == "whole":
        return [(0, sys.maxsize)]
    used = meta.get("sections")
    if used:  # absent before sections; empty when the answer used none
        return [(int(s["chars"][0]), int(s["chars"][1])) for s in used]
    if chunk_spans is None:
        return None
    indices = [*range(int(meta.get("lead_chunks") or 0)), *meta.get("chunks", ())]
    if any(not 0 <= i < len(chunk_spans) for i in indices):
        return None
    return [chunk_spans[i] for i in indices]


def covers(spans: Sequence[Span], passage: Span) -> bool:
    """Whether the union of ``spans`` holds all of ``passage`` (overlapping or
    touching spans merge: adjacent chunks render the text between them)."""
    start, end = passage
    reach = start
    for s, e in sorted(spans):
        if s > reach:
            break
        reach = max(reach, e)
        if reach >= end:
            return True
    return reach >= end


def grounded(meta: Mapping[str, Any], passage: Span | None,
             chunk_spans: Sequence[Span] | None) -> bool | None:
    """Whether the answer's context held ``passage``; None when either is unknown."""
    if passage is None:
        return None
    spans = context_spans(meta, chunk_spans)
    return None if spans is None else covers(spans, passage)


def chunk_spans(text: str, *, count: TokenCounter, chunk_tokens: int, overlap_tokens: int,
                expected_chunks: int) -> list[Span] | None:
    """The service's chunks of ``text`` (see the module docstring), tokens counted by
    ``count``; None when they do not match the service's count (other chunk sizes or
    another tokenizer)."""
    chunks = chunk_document(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens,
                            count=count)
    if len(chunks) != expected_chunks:
        print(f"chunks here {len(chunks)} != the service's {expected_chunks}: grounding of "
              "excerpt answers unknown (pass the service's --chunk-tokens)", file=sys.stderr)
        return None
    return [(c.start, c.end) for c in chunks]


def tokenizer_counter(tokenizer_dir: str) -> TokenCounter:
    """The served model's token counter, as the service chunks with it."""
    from serving.routing.prompt_tokens import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)  # cached: loaded once per run

    def count(texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    return count
