"""What a serving path adds to a request at low load: sequential warm streamed chats.

    python -m bench.path_latency --target cacheroute=http://127.0.0.1:8000 \\
        --target direct=http://127.0.0.1:8101 --requests 60

Each target is an OpenAI-compatible base URL (``/v1`` is appended): ``cacheroute
serve``, one plain vLLM engine started with the service's engine arguments, a peer
router in front of such engines. One request at a time, so nothing queues and the
time measured is the path's plus the engine's own: a fixed system prompt of about
300 tokens (cached after the first request), a short varying question, 4 tokens out,
streamed. TTFT is the time to the first chunk with content; end-to-end, to the end of
the stream. ``--warm-up`` requests per target are sent first and not counted, so every
counted prompt finds its system prompt cached. Targets run one after the other, in the
order given, each with the same questions.

Reported per target: TTFT and end-to-end p50/p99 and, with a target named ``direct``,
what each other target adds over it (its p50 minus direct's, and p99 minus p99: the
runs are not paired, so the difference of percentiles is the honest figure). The rows
go to a result file (``bench/results.py``: ``path_latency-<workload>-<date>.json``).
Cost: ``requests`` + ``warm-up`` short requests per target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from bench.machine import describe, machine_info
from bench.results import write_result
from bench.stats import percentile

# About 300 tokens of the default model: a fixed instruction, as a system prompt is.
SYSTEM_PROMPT = " ".join(
    f"Rule {i}: answer in the shortest form that is still correct, name the source "
    f"section when there is one, and say so plainly when the answer is unknown."
    for i in range(1, 12))


def question(n: int) -> str:
    return f"Question {n}: what is {n} plus {n * 3}?"


def one_request(http: httpx.Client, model: str, n: int, max_tokens: int) -> tuple[float, float]:
    """(TTFT, end-to-end) seconds of one streamed chat."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": question(n)}]}
    started = time.perf_counter()
    ttft = None
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            resp.raise_for_status()
        for line in resp.iter_lines():
            if ttft is None and line.startswith("data: {"):
                event = json.loads(line[len("data: "):])
                if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                    ttft = time.perf_counter() - started
    end = time.perf_counter() - started
    return (end if ttft is None else ttft), end


def model_of(http: httpx.Client) -> str:
    return str(http.get("/v1/models").json()["data"][0]["id"])


def measure(url: str, *, requests: int, warm_up: int, max_tokens: int,
            api_key: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        model = model_of(http)
        for n in range(warm_up):
            one_request(http, model, 10_000 + n, max_tokens)
        samples = [one_request(http, model, n, max_tokens) for n in range(requests)]
    ttft = [t for t, _ in samples]
    e2e = [e for _, e in samples]
    return {"requests": requests,
            "ttft_p50_ms": round(percentile(ttft, 50) * 1000, 1),
            "ttft_p99_ms": round(percentile(ttft, 99) * 1000, 1),
            "e2e_p50_ms": round(percentile(e2e, 50) * 1000, 1),
            "e2e_p99_ms": round(percentile(e2e, 99) * 1000, 1)}


def added_over_direct(rows: list[dict[str, Any]]) -> None:
    """Each row's percentiles minus the ``direct`` row's, in place."""
    direct = next((r for r in rows if r["target"] == "direct"), None)
    if direct is None:
        return
    for row in rows:
        if row is not direct:
            for key in ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms"):
                row[f"added_{key}"] = round(row[key] - direct[key], 1)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    out = ["| target | requests | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | "
           "added TTFT p50 / p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        added = (f"{r['added_ttft_p50_ms']} / {r['added_ttft_p99_ms']}"
                 if "added_ttft_p50_ms" in r else "-")
        out.append(f"| {r['target']} | {r['requests']} | {r['ttft_p50_ms']} | "
                   f"{r['ttft_p99_ms']} | {r['e2e_p50_ms']} | {r['e2e_p99_ms']} | {added} |")
    return "\n".join(out)


def target(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith("http"):
        raise argparse.ArgumentTypeError(f"expected NAME=http://host:port, got {text!r}")
    return name, url.rstrip("/").removesuffix("/v1")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=target, action="append", required=True,
                   help="NAME=URL, repeated; a target named 'direct' is the baseline")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--warm-up", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--api-key", default=None)
    p.add_argument("--workload", default="sequential-warm-chat",
                   help="the result file's workload name")
    args = p.parse_args(argv)
    machine = machine_info()
    print(describe(machine), file=sys.stderr)
    rows = []
    for name, url in args.target:
        print(f"[{name}] {args.requests} sequential requests to {url}", file=sys.stderr)
        rows.append({"target": name, "url": url,
                     **measure(url, requests=args.requests, warm_up=args.warm_up,
                               max_tokens=args.max_tokens, api_key=args.api_key)})
    added_over_direct(rows)
    print(markdown(rows))
    command = " ".join(["python -m bench.path_latency",
                        *(a if a != args.api_key else "$API_KEY"
                          for a in (argv if argv is not None else sys.argv[1:]))])
    path = write_result("path_latency", args.workload, command=command, machine=machine,
                        parameters={"requests": args.requests, "warm_up": args.warm_up,
                                    "max_tokens": args.max_tokens,
                                    "targets": [n for n, _ in args.target]},
                        results=rows)
    if path is not None:
        print(f"result: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
