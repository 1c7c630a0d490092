"""Locust load test of the prefix registry: latency warm versus cold, hit rate over time.

Run against a running service (`cacheroute serve`), once per mode, with the same
settings (docs/benchmarks/README.md has the recipe):

    CACHEROUTE_BENCH_MODE=warm .venv/bin/locust -f bench/locustfile.py --headless \
        --host http://127.0.0.1:8000 -u 4 -r 1 -t 3m --csv out/locust-warm
    CACHEROUTE_BENCH_MODE=cold ...same... --csv out/locust-cold

Workload: `CACHEROUTE_BENCH_PREFIXES` system prompts (about 1.2k tokens each), fresh
for every run (a run id in their first block, so no run finds another's cache).
Every request is a chat completion of one prompt, picked uniformly, plus a short
question, `max_tokens=8`. `warm` registers every prompt with `POST /v1/prefixes`
before the users start (each registration prewarms the prompt's home replica);
`cold` registers nothing, so each prompt's first request computes it.

A request is a *prefix hit* when the engine reports `cached_tokens` at least the
prompt's full-block tokens (the registry's own definition, serving/prefixes/registry.py).
The full-block tokens come from the engine's tokenizer and chat template
(`PromptTokenizer`, as the router computes them), so both modes use one yardstick.

Results, besides locust's own `--csv` files (requests named `chat` and
`chat (first use of a prefix)`):
- `<csv>-requests.csv`: one row per request (time, prefix, first use, tokens, hit, ms);
- `<csv>-hits.csv`: per `CACHEROUTE_BENCH_BUCKET_S` seconds: requests, hit rate,
  latency p50 / p95;
- a summary printed at the end; in `warm` mode also the registry's hit and miss
  counts per prefix (`GET /v1/prefixes`), after which the prefixes are deleted again
  (`CACHEROUTE_BENCH_KEEP=1` keeps them).

Settings (environment): CACHEROUTE_BENCH_MODE (warm|cold), CACHEROUTE_BENCH_PREFIXES
(16), CACHEROUTE_BENCH_RULES (60 rule sentences per prompt, about 20 tokens each),
CACHEROUTE_BENCH_MODEL (smollm2-135m-instruct), CACHEROUTE_BENCH_TOKENIZER (the
default model's folder), CACHEROUTE_BENCH_SEED (1), CACHEROUTE_BENCH_BUCKET_S (10),
CACHEROUTE_API_KEY (bearer token, when the service requires one).
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import statistics
import threading
import time
import uuid
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import HttpUser, between, events, task

MODE = os.environ.get("CACHEROUTE_BENCH_MODE", "warm")
NUM_PREFIXES = int(os.environ.get("CACHEROUTE_BENCH_PREFIXES", "16"))
RULES = int(os.environ.get("CACHEROUTE_BENCH_RULES", "60"))
MODEL = os.environ.get("CACHEROUTE_BENCH_MODEL", "smollm2-135m-instruct")
SEED = int(os.environ.get("CACHEROUTE_BENCH_SEED", "1"))
BUCKET_S = float(os.environ.get("CACHEROUTE_BENCH_BUCKET_S", "10"))
API_KEY = os.environ.get("CACHEROUTE_API_KEY", "")
KEEP = os.environ.get("CACHEROUTE_BENCH_KEEP") == "1"
BLOCK_SIZE = 128  # engine.block_size of the default config
MAX_TOKENS = 8
# Long enough for any run; registered prefixes are deleted at the end anyway.
PREFIX_TTL_S = 3600

if MODE not in ("warm", "cold"):
    raise SystemExit(f"CACHEROUTE_BENCH_MODE must be warm or cold, got {MODE!r}")

QUESTIONS = [
    "Which rule covers refunds?", "Summarise rule 7 in five words.",
    "May I quote section 12?", "What do I say first?", "Is anything promised?",
    "Which sections mention greetings?", "Give me rule 30.", "How many rules are there?",
]


def system_prompt(run_id: str, index: int) -> dict[str, str]:
    rules = " ".join(
        f"Rule {i}: greet the customer of desk {index}, quote section {i}, "
        f"never promise refund {i * 3 + index}." for i in range(RULES))
    return {"role": "system", "content": f"Run {run_id}, help desk {index}. {rules}"}


@dataclass(frozen=True)
class _Prefix:
    """A prefix as the registry tokenises it: no generation prompt after it."""

    messages: list[dict[str, str]]
    add_generation_prompt: bool = False


def cacheable_tokens(prompts: list[dict[str, str]]) -> list[int]:
    """Full-block tokens of each one-message prefix, as the engine tokenises it."""
    from serving.routing.prompt_tokens import PromptTokenizer

    path = os.environ.get("CACHEROUTE_BENCH_TOKENIZER")
    if not path:
        from serving.models.default import ensure_default_model

        path = str(ensure_default_model())
    tokenizer = PromptTokenizer(path)
    counts = [len(tokenizer.token_ids(_Prefix([p])) or ()) for p in prompts]
    return [n // BLOCK_SIZE * BLOCK_SIZE for n in counts]


@dataclass(frozen=True)
class Sample:
    t_s: float
    prefix: int
    first_use: bool
    prompt_tokens: int
    cached_tokens: int
    hit: bool
    latency_ms: float


class Run:
    """The run's prompts and samples (one locust process; users are greenlets)."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:12]
        self.prompts = [system_prompt(self.run_id, i) for i in range(NUM_PREFIXES)]
        self.cacheable = cacheable_tokens(self.prompts)
        self.keys: list[str] = []
        self.used: set[int] = set()
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def first_use(self, prefix: int) -> bool:
        with self.lock:
            first = prefix not in self.used
            self.used.add(prefix)
            return first


RUN: Run | None = None


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}


@events.init.add_listener
def on_init(environment: Any, **_: Any) -> None:
    # Before the run and its time limit start: tokenising and registering take a while.
    global RUN
    RUN = Run()
    # Tokenising did not yield to gevent's loop, whose cached clock is now stale: the
    # run-time limit set next would fire at once without this.
    gevent.get_hub().loop.update_now()
    print(f"prefix bench: mode={MODE} run={RUN.run_id} prefixes={NUM_PREFIXES} "
          f"full-block tokens each={RUN.cacheable}")
    if MODE != "warm":
        return
    started = time.monotonic()
    for i, prompt in enumerate(RUN.prompts):
        resp = requests.post(f"{environment.host}/v1/prefixes", headers=_headers(), timeout=600,
                             json={"model": MODEL, "messages": [prompt], "ttl_s": PREFIX_TTL_S})
        if resp.status_code not in (200, 201):
            raise SystemExit(f"registering prefix {i} failed: {resp.status_code} {resp.text}")
        body = resp.json()
        RUN.keys.append(body["key"])
        if body["cacheable_tokens"] != RUN.cacheable[i]:
            print(f"prefix bench: prefix {i}: registry counts {body['cacheable_tokens']} "
                  f"full-block tokens, the bench {RUN.cacheable[i]}")
    print(f"prefix bench: registered {NUM_PREFIXES} prefixes in "
          f"{time.monotonic() - started:.1f} s")


@events.test_start.add_listener
def on_test_start(environment: Any, **_: Any) -> None:
    if RUN is not None:
        RUN.started = time.monotonic()


_user_numbers = itertools.count()


class ChatUser(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        # Seeded per user in spawn order: the same settings replay the same choices.
        self.rng = random.Random(SEED * 1000 + next(_user_numbers))

    @task
    def chat(self) -> None:
        run = RUN
        assert run is not None
        prefix = self.rng.randrange(NUM_PREFIXES)
        first = run.first_use(prefix)
        messages = [run.prompts[prefix], {"role": "user", "content": self.rng.choice(QUESTIONS)}]
        t0 = time.perf_counter()
        with self.client.post("/v1/chat/completions", headers=_headers(), catch_response=True,
                              name="chat (first use of a prefix)" if first else "chat",
                              json={"model": MODEL, "messages": messages,
                                    "max_tokens": MAX_TOKENS, "temperature": 0}) as resp:
            latency_ms = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            usage = resp.json().get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            with run.lock:
                run.samples.append(Sample(
                    t_s=round(time.monotonic() - run.started, 3), prefix=prefix,
                    first_use=first, prompt_tokens=usage.get("prompt_tokens", 0),
                    cached_tokens=cached, hit=cached >= run.cacheable[prefix],
                    latency_ms=round(latency_ms, 1)))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@events.test_stop.add_listener
def on_test_stop(environment: Any, **_: Any) -> None:
    run = RUN
    if run is None:
        return
    base = Path(getattr(environment.parsed_options, "csv_prefix", None) or f"out/locust-{MODE}")
    samples = sorted(run.samples, key=lambda s: s.t_s)
    _write(Path(f"{base}-requests.csv"), [f.name for f in fields(Sample)],
           [list(astuple(s)) for s in samples])
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int(s.t_s // BUCKET_S), []).append(s)
    rows = []
    for b in sorted(buckets):
        group = buckets[b]
        latencies = [s.latency_ms for s in group]
        rows.append([b * BUCKET_S, len(group), round(sum(s.hit for s in group) / len(group), 3),
                     round(_pct(latencies, 50), 1), round(_pct(latencies, 95), 1)])
    _write(Path(f"{base}-hits.csv"),
           ["t_start_s", "requests", "hit_rate", "latency_p50_ms", "latency_p95_ms"], rows)

    def line(name: str, group: list[Sample]) -> str:
        lat = [s.latency_ms for s in group]
        rate = sum(s.hit for s in group) / len(group) if group else float("nan")
        return (f"  {name:<22} n={len(group):<5} hit rate={rate:.3f} "
                f"p50={_pct(lat, 50):.0f} ms p95={_pct(lat, 95):.0f} ms")

    print(f"prefix bench summary: mode={MODE} run={run.run_id}")
    print(line("all requests", samples))
    print(line("first use of a prefix", [s for s in samples if s.first_use]))
    print(line("later requests", [s for s in samples if not s.first_use]))
    print(f"  written: {base}-requests.csv, {base}-hits.csv")

    if MODE == "warm" and run.keys:
        listing = requests.get(f"{environment.host}/v1/prefixes", headers=_headers(), timeout=60)
        if listing.ok:
            counts = {p["key"]: p for p in listing.json()["data"]}
            for i, key in enumerate(run.keys):
                p = counts.get(key)
                if p is not None:
                    print(f"  registry prefix {i} {key[:12]}: hits={p['hits']} "
                          f"misses={p['misses']} home={p['home_replica']}")
        if not KEEP:
            for key in run.keys:
                requests.delete(f"{environment.host}/v1/prefixes/{key}", headers=_headers(),
                                timeout=60)
