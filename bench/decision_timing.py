"""Timing one routing decision: the prompts, the timer, and one function per measured row.

Every row is ``n`` calls timed one at a time with ``time.perf_counter_ns`` while the
garbage collector is off, after ``_WARMUP_CALLS`` untimed ones; each call's argument
is built outside the timed region. A row costs ``n`` calls of its own work plus that
building (tokenizing the prompt sets is the slow part at 16k tokens). What each row
measures, and the target it is checked against, is bench/decision_cost.py's
docstring; that module is the command line and the report.
"""

from __future__ import annotations

import cProfile
import gc
import io
import logging
import os
import pstats
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import percentile
from bench.workloads import make_tenant, question

# The row the target is checked on, and the same decision from a tuple of ints.
PACKED_ROW = "cacheroute select (packed ids)"
TUPLE_ROW = "cacheroute select (token ids)"
# The packed row with every block of every learned chain written (no refresh interval).
EVERY_BLOCK_ROW = "cacheroute select (packed ids, every block written)"
# Tokens reserved for the question appended to each tenant prefix (questions are
# 15-25 tokens), so that prefix + question lands near the nominal size.
_QUESTION_BUDGET_TOKENS = 20
# Untimed calls before each timed series: first-call effects (caches, allocation).
_WARMUP_CALLS = 20


@dataclass(frozen=True)
class CompletionLike:
    """What ``PromptTokenizer`` reads from a parsed ``/v1/completions`` request."""

    prompt: str


@dataclass(frozen=True)
class ChatLike:
    """What ``PromptTokenizer`` reads from a parsed ``/v1/chat/completions`` request:
    the tenant prefix as the system message, the question as the user turn."""

    messages: list[dict[str, str]]


def chat_like(prompts: "PromptSet", i: int) -> ChatLike:
    return ChatLike(messages=[
        {"role": "system", "content": prompts.timed_texts[i % len(prompts.timed_texts)]},
        {"role": "user", "content": prompts.question_texts[i]}])


@dataclass(frozen=True, kw_only=True)
class Row:
    name: str
    prompt_tokens: int | None
    block_size: int | None
    replicas: int | None
    p50_us: float
    p99_us: float
    n: int
    mean_us: float
    max_us: float
    mean_tokens: float | None = None
    outcomes: dict[str, int] | None = None


@dataclass
class PromptSet:
    """Prompts of one nominal size: tenant prefixes (timed and warm) and questions."""

    tokens: int
    timed_texts: list[str]
    timed_ids: list[tuple[int, ...]]
    warm_texts: list[str]
    warm_ids: list[tuple[int, ...]]
    question_texts: list[str]
    question_ids: list[tuple[int, ...]]
    lengths: list[int] = field(default_factory=list)

    def text(self, i: int) -> str:
        return self.timed_texts[i % len(self.timed_texts)] + " " + self.question_texts[i]

    def ids(self, i: int) -> tuple[int, ...]:
        return self.timed_ids[i % len(self.timed_ids)] + self.question_ids[i]

    def packed(self, i: int) -> array:
        """``ids(i)`` as the adapter's tokenizer builds them (``array("I")``)."""
        return array("I", self.ids(i))


def build_prompt_set(tokenizer: Any, tokens: int, *, timed_tenants: int, warm_tenants: int,
                     questions: int, seed: int) -> PromptSet:
    prefix_tokens = max(tokens - _QUESTION_BUDGET_TOKENS, 1)
    # Policy texts run about 1.5 tokens per word; draw enough words, cut in tokens.
    words = int(prefix_tokens / 1.3) + 64

    def prefix(index: int) -> tuple[str, tuple[int, ...]]:
        text = make_tenant(seed, index, words).system_prompt
        ids = tokenizer.encode(text, add_special_tokens=False)[:prefix_tokens]
        return tokenizer.decode(ids), tuple(ids)

    timed = [prefix(i) for i in range(timed_tenants)]
    warm = [prefix(timed_tenants + i) for i in range(warm_tenants)]
    rng = random.Random(f"decision-cost-questions:{seed}:{tokens}")
    q_texts = [question(rng, i) for i in range(questions)]
    q_ids = [tuple(tokenizer.encode(" " + q, add_special_tokens=False)) for q in q_texts]
    return PromptSet(tokens=tokens, timed_texts=[t for t, _ in timed],
                     timed_ids=[i for _, i in timed], warm_texts=[t for t, _ in warm],
                     warm_ids=[i for _, i in warm], question_texts=q_texts, question_ids=q_ids)


class Timer:
    """Times ``call(prepare(i))`` for i in range(n), one call at a time, GC off."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress

    def run(self, n: int, prepare: Callable[[int], Any], call: Callable[[Any], Any],
            *, offset: int = 0) -> list[float]:
        for i in range(min(_WARMUP_CALLS, n)):
            call(prepare(offset + i))
        samples_ns = [0] * n
        clock = time.perf_counter_ns
        gc.collect()
        gc.disable()
        try:
            for i in range(n):
                arg = prepare(offset + i)  # built outside the timed region
                start = clock()
                call(arg)
                samples_ns[i] = clock() - start
                if i % 100 == 99:
                    self._progress.update(100)
        finally:
            gc.enable()
        self._progress.update(n % 100)
        return [s / 1000.0 for s in samples_ns]


def make_row(name: str, samples_us: Sequence[float], *, tokens: int | None,
             block_size: int | None, replicas: int | None, **extra: Any) -> Row:
    return Row(name=name, prompt_tokens=tokens, block_size=block_size, replicas=replicas,
               p50_us=round(percentile(samples_us, 50), 2),
               p99_us=round(percentile(samples_us, 99), 2), n=len(samples_us),
               mean_us=round(sum(samples_us) / len(samples_us), 2),
               max_us=round(max(samples_us), 2), **extra)


def replica_ids(count: int) -> list[str]:
    return [f"replica-{k}" for k in range(count)]


def fixed_loads(replicas: Sequence[str]) -> dict[str, int]:
    """A deterministic, uneven in-flight map (0..3 per replica)."""
    return {rid: (k * 7 + 1) % 4 for k, rid in enumerate(replicas)}


def populated_policy(prompts: PromptSet, *, block_size: int, replicas: int,
                     refresh_s: float | None = None) -> Any:
    """A policy over ``replicas`` that has routed every warm tenant's prompt, then each
    timed tenant's own prefix once. ``refresh_s``: its ``ownership_refresh_s``."""
    from router import CacheAwarePolicy, PolicyConfig, RouteRequest

    policy = CacheAwarePolicy(PolicyConfig(block_size=block_size, hash_seed="0",
                                           ownership_refresh_s=refresh_s))
    ids = replica_ids(replicas)
    policy.set_replicas(ids)
    loads = fixed_loads(ids)
    for prefix in prompts.warm_ids + prompts.timed_ids:
        policy.select(RouteRequest(token_ids=prefix), loads)
    return policy


def bench_cacheroute(prompts: PromptSet, *, block_size: int, replicas: int, n: int,
                     tokenizer: Any, timer: Timer, with_tokenize: bool) -> list[Row]:
    from router import RouteRequest

    loads = fixed_loads(replica_ids(replicas))
    common = {"tokens": prompts.tokens, "block_size": block_size, "replicas": replicas}
    rows = []
    policy = None
    # The same prompts on three policies: packed, packed with every block written, and
    # as a tuple; the tuple's policy then serves the tokenize rows, on questions it has
    # not seen.
    series = ((PACKED_ROW, prompts.packed, None), (EVERY_BLOCK_ROW, prompts.packed, 0.0),
              (TUPLE_ROW, prompts.ids, None))
    for name, make_ids, refresh_s in series:
        policy = populated_policy(prompts, block_size=block_size, replicas=replicas,
                                  refresh_s=refresh_s)
        outcomes: Counter[str] = Counter()
        lengths: list[int] = []

        def select_ids(request: Any, policy: Any = policy,
                       outcomes: Counter[str] = outcomes) -> None:
            outcomes[policy.select(request, loads).outcome.name] += 1

        def prepare_ids(i: int, make_ids: Callable[[int], Any] = make_ids,
                        lengths: list[int] = lengths) -> Any:
            token_ids = make_ids(i)  # built outside the timed region, as the tokenizer does
            lengths.append(len(token_ids))
            return RouteRequest(token_ids=token_ids)

        samples = timer.run(n, prepare_ids, select_ids)
        rows.append(make_row(name, samples, **common, outcomes=dict(outcomes),
                             mean_tokens=round(sum(lengths) / len(lengths), 1)))
    if with_tokenize:
        def tokenize_select(request: CompletionLike) -> None:
            token_ids = tokenizer.packed_ids(request)
            policy.select(RouteRequest(token_ids=token_ids), loads)

        # Questions n..2n-1: texts this policy has not seen in the series above.
        samples = timer.run(n, lambda i: CompletionLike(prompts.text(i)), tokenize_select,
                            offset=n)
        rows.append(make_row("cacheroute tokenize+select (text)", samples, **common))
        # Chat: the system prompt is a segment between special tokens, cached after
        # its first encode (serving/routing/segment_tokens.py); only the user turn is encoded.
        samples = timer.run(n, lambda i: chat_like(prompts, i), tokenize_select, offset=n)
        rows.append(make_row("cacheroute tokenize+select (chat)", samples, **common))
    return rows


def bench_hash_only(prompts: PromptSet, *, block_size: int, n: int, timer: Timer) -> list[Row]:
    from router import PrefixHasher

    rows = []
    for name, make_ids in (("cacheroute hash only (PrefixHasher)", prompts.ids),
                           ("cacheroute hash only, packed ids (PrefixHasher)", prompts.packed)):
        hasher = PrefixHasher(block_size, "0")
        samples = timer.run(n, make_ids, hasher.block_hashes)
        rows.append(make_row(name, samples, tokens=prompts.tokens, block_size=block_size,
                             replicas=None))
    return rows


def bench_control(prompts: PromptSet, *, n: int, timer: Timer) -> Row:
    """The machine's own tail: packing each prompt's ids, fixed work that touches
    nothing of the router, timed like the rows above. A row whose p99 is further
    from its p50 than this one's owes the difference to its own work."""
    samples = timer.run(n, prompts.ids, lambda ids: array("I", ids))
    return make_row("control: pack the ids (no router)", samples, tokens=prompts.tokens,
                    block_size=None, replicas=None)


def bench_tokenize_only(prompts: PromptSet, *, n: int, tokenizer: Any, timer: Timer) -> Row:
    samples = timer.run(n, lambda i: CompletionLike(prompts.text(i)), tokenizer.packed_ids)
    return make_row("tokenize only (PromptTokenizer)", samples, tokens=prompts.tokens,
                    block_size=None, replicas=None)


def bench_tokenize_chat(prompts: PromptSet, *, n: int, tokenizer: Any, timer: Timer) -> Row:
    samples = timer.run(n, lambda i: chat_like(prompts, i), tokenizer.packed_ids)
    return make_row("tokenize only, chat (PromptTokenizer)", samples, tokens=prompts.tokens,
                    block_size=None, replicas=None)


def _ray_chosen(matched: list[str] | None, tenants: list[str], i: int) -> str:
    # Ray's router takes a matched replica when the match is long enough, else the
    # least-filled or a pow2 choice; for the tree's cost any tenant will do.
    return matched[0] if matched else tenants[i % len(tenants)]


def bench_ray_direct(prompts: PromptSet, *, replicas: int, n: int,
                     timer: Timer) -> list[Row]:
    from serving.ray_private import PrefixTree

    tree = PrefixTree()
    tenants = replica_ids(replicas)
    tree.add_tenants(tenants, time.time())
    for w, text in enumerate(prompts.warm_texts):
        tree.insert(text, tenants[w % replicas], time.time())
    for j, text in enumerate(prompts.timed_texts):
        tree.insert(text, tenants[j % replicas], time.time())

    match_ns: list[int] = []
    clock = time.perf_counter_ns

    def match_insert(arg: tuple[int, str]) -> None:
        i, text = arg
        start = clock()
        _, matched = tree.prefix_match(text, tenants)
        match_ns.append(clock() - start)
        tree.insert(text, _ray_chosen(matched, tenants, i), time.time())

    samples = timer.run(n, lambda i: (i, prompts.text(i)), match_insert, offset=n)
    common = {"tokens": prompts.tokens, "block_size": None, "replicas": replicas}
    match_us = [ns / 1000.0 for ns in match_ns[-n:]]  # the timed calls, not the warm-up
    return [make_row("ray PrefixTree match+insert (direct)", samples, **common),
            make_row("ray PrefixTree prefix_match only (direct)", match_us, **common)]


def bench_ray_actor(prompts: PromptSet, *, replicas: int, n: int, timer: Timer) -> Row:
    import ray

    from serving.ray_private import PrefixTreeActor

    actor = PrefixTreeActor.remote()  # type: ignore[attr-defined]
    try:
        tenants = replica_ids(replicas)
        ray.get(actor.add_tenants.remote(tenants, time.time()))
        for w, text in enumerate(prompts.warm_texts):
            ray.get(actor.insert.remote(text, tenants[w % replicas], time.time()))
        for j, text in enumerate(prompts.timed_texts):
            ray.get(actor.insert.remote(text, tenants[j % replicas], time.time()))

        def match_insert(arg: tuple[int, str]) -> None:
            i, text = arg
            _, matched = ray.get(actor.prefix_match.remote(text, tenants))
            ray.get(actor.insert.remote(text, _ray_chosen(matched, tenants, i), time.time()))

        samples = timer.run(n, lambda i: (i, prompts.text(i)), match_insert, offset=n)
    finally:
        ray.kill(actor)
    return make_row("ray PrefixTreeActor match+insert (ray.get)", samples,
                    tokens=prompts.tokens, block_size=None, replicas=replicas)


def start_local_ray() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # A private local cluster, never an existing one (RAY_ADDRESS is ignored).
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)


def profile_select(prompts: PromptSet, *, block_size: int, calls: int = 300,
                   top: int = 12) -> str:
    """cProfile of ``select`` from packed ids on a populated 2-replica policy; the top
    functions by own time."""
    from router import RouteRequest

    policy = populated_policy(prompts, block_size=block_size, replicas=2)
    loads = fixed_loads(replica_ids(2))
    requests = [RouteRequest(token_ids=prompts.packed(i)) for i in range(calls)]
    profiler = cProfile.Profile()
    profiler.enable()
    for request in requests:
        policy.select(request, loads)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    # Keep the header line with the totals and the table; drop pstats' preamble.
    start = next((k for k, line in enumerate(lines) if "function calls" in line), 0)
    return "\n".join(lines[start:])
