"""The document benchmark's answers, and their rows per mode and document size.

A row (one per mode and long-document size; ``windows`` None for the default
documents) holds what the long-document goal is stated in:
- ``hit_rate``: engine ``cached_tokens`` / prompt tokens over all its questions, and
  ``hit_rate_after_first``: over each document's questions after its first (the first
  may pay for prewarming the document missed; the rest ask about other parts of it);
- TTFT p50/p99 (request sent to the first content token, streamed) and e2e p50;
- ``grounded``: the share of questions whose context held their passage
  (``documents_grounding``), over the questions where that is known
  (``grounded_known``); None when it is known for none;
- ``one_section``: answers that used exactly one section (the rest several, or none
  when the response has no sections).

Token shares are weighed by tokens, not averaged per question. Cost: O(answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import percentile


@dataclass(frozen=True, kw_only=True)
class Answer:
    mode: str
    document: int
    number: int  # the question's place in its document's session, 0 first
    prompt_tokens: int
    cached_tokens: int
    assembly_ms: float
    latency_s: float
    chunks: tuple[int, ...]
    sections: tuple[int, ...] = ()  # the document's sections the answer used
    windows: float | None = None  # a long document's length, in context windows
    passage: int | None = None  # the passage a long document's question is about
    ttft_s: float | None = None  # to the first content token; None when none came
    grounded: bool | None = None  # the context held the passage; None: unknown


def hit_rate(answers: Sequence[Answer]) -> float | None:
    prompt = sum(a.prompt_tokens for a in answers)
    return round(sum(a.cached_tokens for a in answers) / prompt, 3) if prompt else None


def _pct(values: Sequence[float], q: float, digits: int = 3) -> float | None:
    return round(percentile(values, q), digits) if values else None


def row(mode: str, windows: float | None, answers: Sequence[Answer]) -> dict[str, Any]:
    """One table row for ``answers`` (one mode, one document size)."""
    ttft = [a.ttft_s for a in answers if a.ttft_s is not None]
    known = [a.grounded for a in answers if a.grounded is not None]
    return {
        "mode": mode, "windows": windows, "questions": len(answers),
        "hit_rate": hit_rate(answers),
        "hit_rate_after_first": hit_rate([a for a in answers if a.number > 0]),
        "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
        "e2e_p50_s": _pct([a.latency_s for a in answers], 50),
        "grounded": round(sum(known) / len(known), 3) if known else None,
        "grounded_known": len(known),
        "one_section": sum(1 for a in answers if len(a.sections) == 1),
        "prompt_tokens": sum(a.prompt_tokens for a in answers),
        "cached_tokens": sum(a.cached_tokens for a in answers),
    }


def rows(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """One row per (mode, document size), in mode order of first appearance, then
    size."""
    modes = list(dict.fromkeys(a.mode for a in answers))
    out = []
    for mode in modes:
        sizes = sorted({a.windows for a in answers if a.mode == mode},
                       key=lambda w: -1.0 if w is None else w)
        for windows in sizes:
            out.append(row(mode, windows, [a for a in answers
                                           if (a.mode, a.windows) == (mode, windows)]))
    return out


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_rows(table: Sequence[dict[str, Any]]) -> str:
    out = [("| mode | windows | questions | hit rate | hit rate after first | TTFT p50 s | "
            "TTFT p99 s | e2e p50 s | grounded | one section |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        out.append(f"| {r['mode']} | {_cell(r['windows'], 'g')} | {r['questions']} | "
                   f"{_cell(r['hit_rate'], '.3f')} | {_cell(r['hit_rate_after_first'], '.3f')} | "
                   f"{_cell(r['ttft_p50_s'], '.3f')} | {_cell(r['ttft_p99_s'], '.3f')} | "
                   f"{_cell(r['e2e_p50_s'], '.3f')} | {_cell(r['grounded'], '.3f')} | "
                   f"{r['one_section']} |")
    return "\n".join(out)
