"""A question about a sectioned document as legs, one per answering section, and the
map-reduce over them.

- ``plan_legs``: the sections that answer (``sections.pick_legs``), each leg's prompt
  the section's anchor and the question, checked exactly against the window; a leg
  over it loses tail chunks (its head, the anchor's cached blocks, stays).
- ``map_reduce``: with two or more legs, each leg is sent as a chat request of its
  own (concurrently, not streamed: each is a cache hit on the replica holding its
  section), then one short *combine* request -- the question and the legs' answers,
  no document text -- is sent as the client asked (streamed or not). The answer's
  usage is the sum over the legs and the combine (what the question cost), and the
  ``document`` object lists each leg's usage.

Cost: one exact tokenisation per leg (more when a leg is trimmed); at most
``max_section_legs`` + 1 requests per question.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from serving.documents import sections
from serving.documents.sections import Leg, SectionedDocument

COMBINE_INSTRUCTION = ("Several parts of one document each answered the question below "
                       "from their own text. Combine their answers into one answer; ignore "
                       "a part that found no answer.")


async def plan_legs(doc: SectionedDocument, similarities: Sequence[float], *, question: str,
                    answer_tokens: int, history: Sequence[Mapping[str, str]], max_legs: int,
                    margin: float, window_tokens: int,
                    prompt_tokens: Callable[[list[dict[str, str]]], Awaitable[int]],
                    no_room: Callable[[], Exception]) -> list[Leg]:
    """The legs of one question, best section first."""
    picked = sections.pick_legs(similarities, [a.section for a in doc.sections],
                                max_legs=max_legs, margin=margin)
    legs = []
    for index in picked:
        section = doc.sections[index].section
        last = section.last_chunk
        while True:
            messages = sections.messages(
                name=doc.name, text=doc.text, chunks=doc.chunks, section=section,
                count=len(doc.sections), question=question, history=history, last_chunk=last,
                pad=doc.sections[index].pad)
            over = await prompt_tokens(messages) + answer_tokens - window_tokens
            if over <= 0:
                break
            if last == section.first_chunk:
                raise no_room()
            last = sections.trim(doc.fresh_tokens, section, last, over)
        legs.append(Leg(section=index, last_chunk=last, messages=messages))
    return legs


def combine_messages(question: str, answers: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The combine request: (section label, answer) pairs, then the question."""
    parts = "\n\n".join(f"From {label}: {answer.strip() or '(no answer)'}"
                        for label, answer in answers)
    return [{"role": "system", "content": COMBINE_INSTRUCTION},
            {"role": "user", "content": f"{parts}\n\nQuestion: {question}"}]


@dataclass(frozen=True, kw_only=True)
class LegAnswer:
    section: int
    answer: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    def json(self) -> dict[str, int]:
        return {"section": self.section, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens}


def leg_answer(section: int, response: Response) -> LegAnswer | None:
    """A leg's answer and usage from its (non-streamed) response; None if it failed."""
    if response.status_code != 200 or not hasattr(response, "body"):
        return None
    try:
        payload = json.loads(bytes(response.body))
        usage = payload.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return LegAnswer(section=section,
                         answer=str(payload["choices"][0]["message"]["content"] or ""),
                         prompt_tokens=int(usage.get("prompt_tokens") or 0),
                         completion_tokens=int(usage.get("completion_tokens") or 0),
                         cached_tokens=int(details.get("cached_tokens") or 0))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


def add_usage(usage: dict[str, Any], legs: Sequence[LegAnswer]) -> None:
    """Add the legs' usage to the combine's (an OpenAI ``usage`` object), in place."""
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        extra = sum(getattr(leg, key) if key != "total_tokens"
                    else leg.prompt_tokens + leg.completion_tokens for leg in legs)
        usage[key] = int(usage.get(key) or 0) + extra
    details = usage.get("prompt_tokens_details")
    details = dict(details) if isinstance(details, dict) else {}
    details["cached_tokens"] = (int(details.get("cached_tokens") or 0)
                                + sum(leg.cached_tokens for leg in legs))
    usage["prompt_tokens_details"] = details


async def map_reduce(send: Callable[[list[dict[str, str]], bool], Awaitable[Response]],
                     doc: SectionedDocument, legs: Sequence[Leg], question: str
                     ) -> tuple[Response, list[LegAnswer]]:
    """Send each leg (``send(messages, False)``: never streamed), then the combine
    (``send(messages, True)``: streamed if the client asked). A failed leg's response is
    returned as the answer, with no combine."""
    responses = await asyncio.gather(*(send(leg.messages, False) for leg in legs))
    answers = []
    for leg, response in zip(legs, responses):
        answer = leg_answer(leg.section, response)
        if answer is None:
            return response, []
        answers.append(answer)
    labels = [sections.label(doc.name, a.section, len(doc.sections)) for a in answers]
    combine = combine_messages(question, [(label, a.answer) for label, a in
                                          zip(labels, answers)])
    return await send(combine, True), answers
