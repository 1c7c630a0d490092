"""``cacheroute kvbench``: what the KV cache costs in memory and saves in time, turn by turn.

    cacheroute kvbench --turns 10 --new-tokens 24 --threads 1 --out-dir out/kvbench
    cacheroute kvbench --no-local --url http://127.0.0.1:8000 --prefix-caching on
    cacheroute kvbench --no-local --service both --out-dir out/kvbench-service

Transformers part (``kv_generate``): the seeded conversation (``kv_conversation``)
generated greedily by the model twice, with ``use_cache=True`` (one growing
``DynamicCache``, only new tokens prefilled) and with ``use_cache=False`` (the whole
history recomputed for every token), each mode in its own fresh process so that
peak RSS is comparable. Per turn: KV-cache bytes from the cache tensors beside
2 x layers x kv_heads x head_dim x tokens x dtype bytes (``kv_size``), TTFT, time
per generated token, RSS and peak RSS. The greedy texts of the two modes must match.

Service part (``kvbench_service``): the same conversation through the OpenAI API of
a running service (``--url``) or of services this command starts with vLLM's prefix
cache on and then off (``--service both``): TTFT and ``cached_tokens`` per turn.

Outputs in ``--out-dir``: ``kvbench.json`` (or ``--json PATH``; one record per turn
and mode), ``kvbench.md`` (the tables, also printed) and ``kvbench.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from bench.kv_conversation import KVBENCH_SEED, make_conversation
from bench.kv_generate import (
    DTYPES,
    ModeFailed,
    ModeResult,
    ModeSpec,
    run_mode_in_subprocess,
)
from bench.machine import describe, machine_info

PROG = "cacheroute kvbench"
MAX_TURNS = 50  # the conversation pool has 20 questions; beyond 50 turns the no-cache run takes hours
MAX_NEW_TOKENS = 512


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class UsageError(ValueError):
    """A bad option value found after parsing (a missing model, say); exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog=PROG, description="What the KV cache costs in memory and saves "
                                              "in time, turn by turn (docs/benchmarks/README.md).")
    p.add_argument("--turns", type=int, default=10, help=f"user turns, 1-{MAX_TURNS} (default 10)")
    p.add_argument("--new-tokens", type=int, default=24,
                   help=f"tokens generated per turn, 2-{MAX_NEW_TOKENS} (default 24)")
    p.add_argument("--model", help="model folder or hub name (default: the built default model)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights and KV cache dtype of the transformers runs (default float32)")
    p.add_argument("--seed", type=int, default=KVBENCH_SEED, help="conversation seed")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-local", action="store_true",
                   help="skip the transformers runs (service part only)")
    service = p.add_mutually_exclusive_group()
    service.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    service.add_argument("--service", choices=("both",),
                         help="start the service twice, prefix caching on then off")
    p.add_argument("--api-key", help="bearer token for --url (default: the first key in "
                                     "$CACHEROUTE_API_KEYS, else none)")
    p.add_argument("--served-model", help="model name for --url (default: the first listed)")
    p.add_argument("--prefix-caching", choices=("on", "off"),
                   help="label a --url run with the service's prefix-cache setting")
    p.add_argument("--start-timeout-s", type=float, default=900.0,
                   help="--service both: how long one service may take to get ready")
    p.add_argument("--out-dir", type=Path, default=Path("out/kvbench"))
    p.add_argument("--json", type=Path, help="results JSON (default OUT_DIR/kvbench.json)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.turns <= MAX_TURNS:
        raise UsageError(f"--turns must be between 1 and {MAX_TURNS}, got {args.turns}")
    if not 2 <= args.new_tokens <= MAX_NEW_TOKENS:
        raise UsageError(f"--new-tokens must be between 2 and {MAX_NEW_TOKENS}, "
                         f"got {args.new_tokens}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.no_local and not (args.url or args.service):
        raise UsageError("--no-local leaves nothing to run; add --url URL or --service both")
    if args.prefix_caching and not args.url:
        raise UsageError("--prefix-caching labels a --url run; --service both sets it itself")


def resolve_model(model: str | None) -> str:
    """A loadable model folder or hub name, or ``UsageError`` with one line."""
    if model is None:
        from serving.models.default import ensure_default_model

        return str(ensure_default_model(progress=lambda m: print(f"kvbench: {m}",
                                                                 file=sys.stderr)))
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {model}: no config.json in that folder")
        return str(path)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except Exception as err:  # noqa: BLE001 -- hub errors vary; the user needs one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"--model {model}: cannot load its config: {first}") from None
    return model


def _say(message: str) -> None:
    print(f"kvbench: {message}", file=sys.stderr, flush=True)


def run_local(args: argparse.Namespace, model: str) -> list[ModeResult]:
    results = []
    for use_cache in (True, False):
        spec = ModeSpec(model=model, use_cache=use_cache, turns=args.turns,
                        new_tokens=args.new_tokens, dtype=args.dtype, seed=args.seed,
                        threads=args.threads)
        _say(f"use_cache={use_cache}: {args.turns} turns x {args.new_tokens} tokens "
             "in a fresh process")
        results.append(run_mode_in_subprocess(spec, workdir=args.out_dir / "runs", echo=_say))
    return results


def run_service(args: argparse.Namespace, model: str | None) -> list[Any]:
    from bench.kvbench_service import run_both, run_conversation

    conversation = make_conversation(args.turns, seed=args.seed)
    if args.url:
        flag = None if args.prefix_caching is None else args.prefix_caching == "on"
        # The service's own key variable, so a key set up for `serve` works here too.
        env_keys = [k.strip() for k in os.environ.get("CACHEROUTE_API_KEYS", "").split(",")
                    if k.strip()]
        return run_conversation(base_url=args.url, conversation=conversation,
                                max_tokens=args.new_tokens, prefix_caching=flag,
                                api_key=args.api_key or next(iter(env_keys), None),
                                model=args.served_model, progress=_say)
    return run_both(conversation=conversation, max_tokens=args.new_tokens,
                    out_dir=args.out_dir, start_timeout_s=args.start_timeout_s,
                    model_source=model or "default", progress=_say)


def results_json(*, machine: dict[str, Any], command: str, model: str | None,
                 args: argparse.Namespace, local: Sequence[ModeResult],
                 service: Sequence[Any]) -> dict[str, Any]:
    records = [r for result in local for r in result.records]
    cache = [r for r in records if r.use_cache]
    plain = {r.turn: r for r in records if not r.use_cache}
    shape = local[0].kv_shape if local else None
    return {
        "machine": machine,
        "command": command,
        "model": model,
        "settings": {"turns": args.turns, "new_tokens": args.new_tokens, "dtype": args.dtype,
                     "seed": args.seed, "threads": args.threads},
        # Per mode: library versions, torch threads, the load peak and RSS after load.
        "runs": [{"use_cache": result.records[0].use_cache, **result.meta}
                 for result in local if result.records],
        "kv_shape": None if shape is None else {**asdict(shape),
                                                "bytes_per_token": shape.bytes_per_token},
        "kv_bytes_match_formula": all(r.kv_cache_bytes == r.kv_formula_bytes for r in cache)
        if cache else None,
        "greedy_texts_identical": all(plain[r.turn].text == r.text for r in cache
                                      if r.turn in plain) if cache and plain else None,
        "records": [asdict(r) for r in records],
        "service_records": [asdict(t) for t in service],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        model = None if args.no_local and args.model is None else resolve_model(args.model)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    from bench.kvbench_report import markdown_table, service_table, write_chart
    from bench.kvbench_service import ServiceUnavailable
    from bench.service import ServiceError

    machine = machine_info()
    command = shlex.join(["cacheroute", "kvbench", *argv])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _say(f"machine: {describe(machine)}")
    try:
        local = [] if args.no_local else run_local(args, str(model))
        service = run_service(args, model) if (args.url or args.service) else []
    except (ModeFailed, ServiceUnavailable, ServiceError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    data = results_json(machine=machine, command=command, model=model, args=args,
                        local=local, service=service)
    json_path = args.json or args.out_dir / "kvbench.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    records = [r for result in local for r in result.records]
    sections = [f"Machine: {describe(machine)}"]
    if records:
        sections.append(markdown_table(records))
    if service:
        sections.append(service_table(service))
    report = "\n\n".join(sections) + "\n"
    (args.out_dir / "kvbench.md").write_text(report, encoding="utf-8")
    print(report, end="")
    if data["kv_bytes_match_formula"] is False:
        _say("warning: KV-cache bytes differ from the formula (see kv_formula_bytes)")
    if data["greedy_texts_identical"] is False:
        _say("warning: the two modes generated different greedy text")

    chart = args.out_dir / "kvbench.png"
    threads = f", {args.threads} torch thread(s)" if args.threads else ""
    title = (f"kvbench: {args.turns} turns x {args.new_tokens} new tokens, "
             f"{Path(model).name if model else 'service'} ({args.dtype}{threads}) -- "
             f"{describe(machine)}")
    try:
        write_chart(chart, records, service, title=title)
    except ImportError:  # matplotlib is optional; the numbers are already written
        _say("no chart (pip install matplotlib)")
        chart_note = "no chart"
    else:
        chart_note = str(chart)
    _say(f"wrote {json_path}, {args.out_dir / 'kvbench.md'}, {chart_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
