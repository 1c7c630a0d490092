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
the section holding its passage; the naive mode answers from excerpts.

Every question is asked streamed (``stream: true``; the ask always ends its stream
with the usage), so TTFT is the time to the first content chunk and end-to-end latency
the time to the stream's end. Reported per mode (``markdown``) and per mode and
document size (``documents_report``): chunk cache hit rate (engine ``cached_tokens`` /
prompt tokens) over all questions and over each document's questions after its first,
TTFT p50/p99, end-to-end latency, context assembly latency (the ingress's own
``document.assembly_ms``), and, for long documents, grounding: the share of questions
whose context held their passage, read from the answer's ``document`` object
(``documents_grounding``), None where it does not say. Services before sections
report no ``sections``; their answers are read from ``mode``, ``lead_chunks`` and
``chunks``, so the same command measures both. The rows go to a result file
(``bench/results.py``: ``docs/benchmarks/results/documents-<workload>-<date>.json``).
``python -m bench.documents --help``.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.documents_grounding import (
    Span,
    chunk_spans,
    grounded,
    passage_spans,
    tokenizer_counter,
)
from bench.documents_qa import (
    DocumentSpec,
    make_documents,
    make_long_documents,
    passage_questions,
    question,
)
from bench.documents_report import Answer, markdown_rows, row, rows
from bench.machine import describe, machine_info
from bench.results import write_result
from bench.stats import percentile
from serving.documents.config import DocumentConfig

MODES = {"naive": "similarity", "document": "document"}


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


@dataclass(frozen=True, kw_only=True)
class Streamed:
    """One streamed answer as read: its ``document`` object, usage, and timings."""

    document: dict[str, Any]
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float | None  # None when no content token came
    latency_s: float


def read_stream(lines: Iterable[str], started: float,
                clock: Callable[[], float] = time.perf_counter) -> Streamed:
    """Read an ask's server-sent events: the ``document`` object (on the first chunk),
    the time of the first chunk with content, and the usage (on the last: the ask
    always ends with it, so no ``stream_options`` is sent, which the ask refuses)."""
    document: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    ttft = None
    for line in lines:
        if not line.startswith("data: {"):
            continue  # blank lines, comments, "data: [DONE]"
        event = json.loads(line[len("data: "):])
        if not document and isinstance(event.get("document"), dict):
            document = event["document"]
        if ttft is None and any((c.get("delta") or {}).get("content")
                                for c in event.get("choices") or ()):
            ttft = clock() - started
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
    if not usage:
        raise RuntimeError(f"stream ended without usage (document {document.get('id')})")
    return Streamed(document=document, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    cached_tokens=int((usage.get("prompt_tokens_details") or {})
                                      .get("cached_tokens") or 0),
                    ttft_s=ttft, latency_s=clock() - started)


def _ask(http: httpx.Client, doc_id: str, text: str, order: str, max_tokens: int) -> Streamed:
    started = time.perf_counter()
    with http.stream("POST", f"/v1/documents/{doc_id}/ask", json={
            "question": text, "max_tokens": max_tokens, "temperature": 0,
            "context_order": order, "stream": True}) as resp:
        if resp.status_code != 200:
            resp.read()
            resp.raise_for_status()
        return read_stream(resp.iter_lines(), started)


@dataclass(frozen=True, kw_only=True)
class Session:
    """One document's session: its id, questions, and what grounding needs."""

    doc_id: str
    questions: Sequence[str]
    windows: float | None = None
    passages: Sequence[int] | None = None  # the passage each question is about
    passage_spans: Sequence[Span] | None = None  # every passage's span in the text
    chunk_spans: Sequence[Span] | None = None  # the service's chunks; None: unknown


def answer_of(mode: str, d: int, number: int, session: Session, reply: Streamed) -> Answer:
    meta = reply.document
    passage = session.passages[number] if session.passages is not None else None
    span = (session.passage_spans[passage]
            if passage is not None and session.passage_spans is not None else None)
    return Answer(
        mode=mode, document=d, number=number, prompt_tokens=reply.prompt_tokens,
        cached_tokens=reply.cached_tokens, assembly_ms=float(meta.get("assembly_ms") or 0.0),
        latency_s=reply.latency_s, ttft_s=reply.ttft_s, chunks=tuple(meta.get("chunks", ())),
        sections=tuple(s["index"] for s in meta.get("sections", ())),
        windows=session.windows, passage=passage,
        grounded=grounded(meta, span, session.chunk_spans))


def run_mode(http: httpx.Client, mode: str, sessions: Sequence[Session],
             max_tokens: int) -> tuple[list[Answer], float]:
    order = MODES[mode]

    def one(d: int) -> list[Answer]:
        s = sessions[d]
        return [answer_of(mode, d, number, s, _ask(http, s.doc_id, text, order, max_tokens))
                for number, text in enumerate(s.questions)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        answers = [a for part in pool.map(one, range(len(sessions))) for a in part]
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
    p.add_argument("--tokenizer-dir", default=None,
                   help="the served model's tokenizer folder, to place excerpt chunks for "
                        "grounding (default: the embedded default model)")
    p.add_argument("--chunk-tokens", type=int, default=_CHUNKING["chunk_tokens"],
                   help="the service's documents.chunk_tokens, for grounding")
    p.add_argument("--chunk-overlap-tokens", type=int,
                   default=_CHUNKING["chunk_overlap_tokens"],
                   help="the service's documents.chunk_overlap_tokens, for grounding")
    p.add_argument("--label", default=None,
                   help="appended to the result file's workload, to keep runs against two "
                        "builds of the service apart (e.g. lead-excerpts); the file's "
                        "revision is this checkout's, not the service's")
    p.add_argument("--out", type=Path, default=None,
                   help="also write every answer as JSON here (the result file is written "
                        "in any case, bench/results.py)")
    return p


# The service's chunking defaults, read from its config section (defaults written once).
_CHUNKING = {name: DocumentConfig.model_fields[name].default
             for name in ("chunk_tokens", "chunk_overlap_tokens")}


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


def workload_name(args: argparse.Namespace) -> str:
    """The result file's workload: ``long-2x-4x-8x``, or ``3x1600-words``, then the
    ``--label``."""
    if args.document_windows is None:
        name = f"{args.sessions}x{args.document_words}-words"
    else:
        name = "long-" + "-".join(f"{w:g}x" for w in args.document_windows)
    return f"{name}-{args.label}" if args.label else name


def command_line(argv: Sequence[str]) -> str:
    """The command as run, its API key left out (the result file is committed)."""
    shown, hide = [], False
    for arg in argv:
        if hide:
            shown.append("$API_KEY")
            hide = False
        elif arg == "--api-key":
            shown.append(arg)
            hide = True
        elif arg.startswith("--api-key="):
            shown.append("--api-key=$API_KEY")
        else:
            shown.append(shlex.quote(arg))
    return " ".join(["python -m bench.documents", *shown])


def summary_of(table: Sequence[dict[str, Any]], answers: Sequence[Answer]) -> dict[str, Any]:
    """Each mode over all sizes; why a grounding is missing, when one is."""
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(a.mode for a in answers):
        r = row(mode, None, [a for a in answers if a.mode == mode])
        for key in ("hit_rate", "hit_rate_after_first", "ttft_p50_s", "grounded"):
            out[f"{mode}_{key}"] = r[key]
    unknown = [r["mode"] for r in table if r["grounded"] is None]
    if unknown and any(a.passage is not None for a in answers):
        out["grounding"] = (f"unknown for {', '.join(dict.fromkeys(unknown))}: the responses "
                            "do not say which context was used, or its chunks could not be "
                            "placed")
    return out


def _chunk_map(args: argparse.Namespace, text: str, chunks: int) -> list[Span] | None:
    try:
        if args.tokenizer_dir is None:
            from serving.models.default import ensure_default_model
            args.tokenizer_dir = str(ensure_default_model())
        count = tokenizer_counter(args.tokenizer_dir)
    except (OSError, ImportError, ValueError) as err:
        print(f"no tokenizer ({err}): grounding of excerpt answers unknown", file=sys.stderr)
        return None
    return chunk_spans(text, count=count, chunk_tokens=args.chunk_tokens,
                       overlap_tokens=args.chunk_overlap_tokens, expected_chunks=chunks)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    machine = machine_info()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    run_id = uuid.uuid4().hex[:8]  # fresh documents: nothing cached from an earlier run
    docs, questions, passages = workload(args)
    sessions, uploads, infos = [], [], []
    with httpx.Client(base_url=args.url, headers=headers, timeout=600) as http:
        for d, doc in enumerate(docs):
            started = time.perf_counter()
            resp = http.post("/v1/documents", json={"model": args.model, "text": doc.text,
                                                    "name": f"{doc.title} {run_id}"})
            resp.raise_for_status()
            uploads.append(time.perf_counter() - started)
            info = resp.json()
            infos.append(info)
            print(f"uploaded {info['id']}: {info['tokens']} tokens, {info['chunks']} chunks, "
                  f"anchor {info['anchor']['mode']} {info['anchor']['tokens']} tokens, "
                  f"{len(info.get('sections', ()))} sections "
                  f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
            long = passages is not None
            sessions.append(Session(
                doc_id=info["id"], questions=questions[d],
                windows=args.document_windows[d] if long else None,
                passages=passages[d] if long else None,
                passage_spans=passage_spans(doc) if long else None,
                chunk_spans=_chunk_map(args, doc.text, info["chunks"]) if long else None))
        summaries, all_answers = [], []
        for mode in MODES:  # naive first: see the module docstring
            answers, wall = run_mode(http, mode, sessions, args.max_tokens)
            summaries.append(summarise(mode, answers, wall))
            all_answers += answers
        for s in sessions:
            http.delete(f"/v1/documents/{s.doc_id}")
    table = rows(all_answers)
    print(f"Machine: {describe(machine)}")
    size = (f"{args.document_words} words" if args.document_windows is None else
            f"{', '.join(f'{w:g}' for w in args.document_windows)} windows of "
            f"{args.window_tokens} tokens")
    print(f"{len(docs)} sessions x {args.questions} questions, documents of {size}; "
          f"uploads {', '.join(f'{u:.1f}' for u in uploads)} s")
    print(markdown(summaries))
    print(markdown_rows(table))
    parameters = {k: v for k, v in vars(args).items()
                  if k not in ("api_key", "out", "url", "tokenizer_dir")}
    parameters["document_tokens"] = [i["tokens"] for i in infos]
    parameters["document_sections"] = [len(i.get("sections", ())) for i in infos]
    summary = summary_of(table, all_answers)
    write_result("documents", workload_name(args), command=command_line(argv), machine=machine,
                 parameters=parameters, results=table, summary=summary)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": machine, "args": {k: str(v) for k, v in vars(args).items()
                                         if k != "api_key"},
            "summaries": [asdict(s) for s in summaries], "rows": table, "summary": summary,
            "answers": [asdict(a) for a in all_answers]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
