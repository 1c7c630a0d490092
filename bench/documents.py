"""Document analysis against a running service: the document path versus the naive one.

Both modes upload the same documents once (``POST /v1/documents``) and ask the same
questions (``POST /v1/documents/{id}/ask``); only ``context_order`` differs:
- ``document``: the document's prewarmed anchor, then the question: the whole
  document when it fits the window, else the section (or, map-reduced, the few
  sections) holding the answer, each a prewarmed anchor of its own. The router sends
  each question to the replica holding its anchor.
- ``naive`` (``context_order: "similarity"``): the usual retrieval prompt, excerpts
  best first after a generic instruction, no anchor: each question's prompt starts
  with its own best chunk, so the router places it by that chunk (no document
  routing) and the engine rarely finds a long cached prefix.

Load: ``sessions`` concurrent sessions, one per document, each asking its
``questions`` questions one after the other (questions of the live bench's
``documents`` workload, ``bench/documents_qa.py``). The naive mode runs first, so
the document mode cannot profit from anything the naive one cached. Documents are
longer than a 2k window by default (``--document-words``), so the document mode
answers from sections and the naive one from excerpts.

Long documents (``--document-windows 2,4,8``): one session per entry, its document
that many context windows (``--window-tokens``) long, in passages on distinct topics
(``documents_qa.make_long_documents``), and its questions each about another passage,
spread evenly over the document (``documents_qa.passage_questions``). The service cuts
such a document into sections, each a prewarmed anchor, and answers each question from
the section holding its passage; the naive mode answers from excerpts. Also reported
per document size, with the sections each answer used.

Reported per mode: chunk cache hit rate (engine ``cached_tokens`` / prompt tokens),
context assembly latency (the ingress's own ``document.assembly_ms``), end-to-end
latency, all over the same questions. ``python -m bench.documents --help``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.documents_qa import (
    DocumentSpec,
    make_documents,
    make_long_documents,
    passage_questions,
    question,
)
from bench.machine import describe, machine_info
from bench.stats import percentile

MODES = {"naive": "similarity", "document": "document"}


@dataclass(frozen=True, kw_only=True)
class Answer:
    mode: str
    document: int
    number: int
    prompt_tokens: int
    cached_tokens: int
    assembly_ms: float
    latency_s: float
    chunks: tuple[int, ...]
    sections: tuple[int, ...] = ()  # the document's sections the answer used
    windows: float | None = None  # a long document's length, in context windows
    passage: int | None = None  # the passage a long document's question is about


@dataclass(frozen=True, kw_only=True)
class ModeSummary:
    mode: str
    questions: int
    hit_rate: float
    prompt_tokens: int
    cached_tokens: int
    assembly_p50_ms: float
    assembly_p95_ms: float
    latency_p50_s: float
    latency_p95_s: float
    latency_mean_s: float
    wall_s: float


def summarise(mode: str, answers: Sequence[Answer], wall_s: float) -> ModeSummary:
    prompt = sum(a.prompt_tokens for a in answers)
    cached = sum(a.cached_tokens for a in answers)
    assembly = [a.assembly_ms for a in answers]
    latency = [a.latency_s for a in answers]
    return ModeSummary(
        mode=mode, questions=len(answers), hit_rate=round(cached / prompt, 3) if prompt else 0.0,
        prompt_tokens=prompt, cached_tokens=cached,
        assembly_p50_ms=round(percentile(assembly, 50), 1),
        assembly_p95_ms=round(percentile(assembly, 95), 1),
        latency_p50_s=round(percentile(latency, 50), 3),
        latency_p95_s=round(percentile(latency, 95), 3),
        latency_mean_s=round(sum(latency) / len(latency), 3) if latency else 0.0,
        wall_s=round(wall_s, 1))


def questions_for(documents: int, per_document: int, seed: int) -> list[list[str]]:
    rng = random.Random(f"documents-bench:{seed}")
    return [[question(rng, n) for n in range(per_document)] for _ in range(documents)]


def by_size(answers: Sequence[Answer]) -> str:
    """Hit rate per mode and long-document size, and how many answers used the one
    section holding their passage's text (the rest: several sections)."""
    rows = ["| mode | windows | questions | chunk cache hit rate | one section |",
            "|---|---:|---:|---:|---:|"]
    keys = sorted({(a.mode, a.windows) for a in answers if a.windows is not None})
    for mode, windows in keys:
        group = [a for a in answers if (a.mode, a.windows) == (mode, windows)]
        s = summarise(mode, group, 0.0)
        single = sum(1 for a in group if len(a.sections) == 1)
        rows.append(f"| {mode} | {windows:g} | {s.questions} | {s.hit_rate:.3f} | {single} |")
    return "\n".join(rows)


def markdown(summaries: Sequence[ModeSummary]) -> str:
    rows = ["| mode | questions | chunk cache hit rate | cached / prompt tokens | "
            "assembly p50 ms | assembly p95 ms | e2e p50 s | e2e p95 s | e2e mean s | wall s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        rows.append(f"| {s.mode} | {s.questions} | {s.hit_rate:.3f} | "
                    f"{s.cached_tokens:,} / {s.prompt_tokens:,} | {s.assembly_p50_ms} | "
                    f"{s.assembly_p95_ms} | {s.latency_p50_s} | {s.latency_p95_s} | "
                    f"{s.latency_mean_s} | {s.wall_s} |")
    return "\n".join(rows)


def _ask(http: httpx.Client, doc_id: str, text: str, order: str, max_tokens: int) -> dict:
    resp = http.post(f"/v1/documents/{doc_id}/ask", json={
        "question": text, "max_tokens": max_tokens, "temperature": 0, "context_order": order})
    resp.raise_for_status()
    return resp.json()


def run_mode(http: httpx.Client, mode: str, doc_ids: Sequence[str],
             questions: Sequence[Sequence[str]], max_tokens: int,
             windows: Sequence[float] | None = None,
             passages: Sequence[Sequence[int]] | None = None) -> tuple[list[Answer], float]:
    order = MODES[mode]

    def session(d: int) -> list[Answer]:
        out = []
        for number, text in enumerate(questions[d]):
            started = time.perf_counter()
            reply = _ask(http, doc_ids[d], text, order, max_tokens)
            usage = reply["usage"]
            out.append(Answer(
                mode=mode, document=d, number=number, prompt_tokens=usage["prompt_tokens"],
                cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                or 0, assembly_ms=reply["document"]["assembly_ms"],
                latency_s=time.perf_counter() - started,
                chunks=tuple(reply["document"]["chunks"]),
                sections=tuple(s["index"] for s in reply["document"].get("sections", ())),
                windows=windows[d] if windows else None,
                passage=passages[d][number] if passages else None))
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(doc_ids)) as pool:
        answers = [a for part in pool.map(session, range(len(doc_ids))) for a in part]
    return answers, time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.documents",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    p.add_argument("--api-key", default=None, help="bearer key, when the service needs one")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sessions", type=int, default=3,
                   help="concurrent sessions, one document each")
    p.add_argument("--questions", type=int, default=6, help="questions per document")
    p.add_argument("--document-words", type=int, default=1600,
                   help="words per document (1600: about 2.4k tokens, beyond a 2k window)")
    p.add_argument("--document-windows", type=_floats, default=None,
                   help="long documents instead: comma-separated lengths in context windows, "
                        "one session each (e.g. 2,4,8); questions on passages spread over each")
    p.add_argument("--window-tokens", type=int, default=2048,
                   help="the service's context window (engine.max_model_len), for "
                        "--document-windows")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"need positive numbers, got {text!r}")
    return values


def workload(args: argparse.Namespace) -> tuple[list[Any], list[list[str]],
                                                 list[list[int]] | None]:
    """(documents, questions per document, passages asked about per document)."""
    if args.document_windows is None:
        docs: list[Any] = make_documents(DocumentSpec(
            documents=args.sessions, document_words=args.document_words, seed=args.seed))
        return docs, questions_for(args.sessions, args.questions, args.seed), None
    docs = make_long_documents(args.document_windows, window_tokens=args.window_tokens,
                               seed=args.seed)
    asked = [passage_questions(d, args.questions, args.seed) for d in docs]
    return docs, [[q for _, q in a] for a in asked], [[p for p, _ in a] for a in asked]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    machine = machine_info()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    run_id = uuid.uuid4().hex[:8]  # fresh documents: nothing cached from an earlier run
    docs, questions, passages = workload(args)
    with httpx.Client(base_url=args.url, headers=headers, timeout=600) as http:
        doc_ids, uploads = [], []
        for doc in docs:
            started = time.perf_counter()
            resp = http.post("/v1/documents", json={"model": args.model, "text": doc.text,
                                                    "name": f"{doc.title} {run_id}"})
            resp.raise_for_status()
            uploads.append(time.perf_counter() - started)
            doc_ids.append(resp.json()["id"])
            info = resp.json()
            print(f"uploaded {info['id']}: {info['tokens']} tokens, {info['chunks']} chunks, "
                  f"anchor {info['anchor']['mode']} {info['anchor']['tokens']} tokens, "
                  f"{len(info.get('sections', ()))} sections "
                  f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        summaries, all_answers = [], []
        for mode in MODES:  # naive first: see the module docstring
            answers, wall = run_mode(http, mode, doc_ids, questions, args.max_tokens,
                                     args.document_windows, passages)
            summaries.append(summarise(mode, answers, wall))
            all_answers += answers
        for doc_id in doc_ids:
            http.delete(f"/v1/documents/{doc_id}")
    print(f"Machine: {describe(machine)}")
    size = (f"{args.document_words} words" if args.document_windows is None else
            f"{', '.join(f'{w:g}' for w in args.document_windows)} windows of "
            f"{args.window_tokens} tokens")
    print(f"{len(docs)} sessions x {args.questions} questions, documents of {size}; "
          f"uploads {', '.join(f'{u:.1f}' for u in uploads)} s")
    print(markdown(summaries))
    if args.document_windows is not None:
        print(by_size(all_answers))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
            "summaries": [asdict(s) for s in summaries],
            "answers": [asdict(a) for a in all_answers]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
