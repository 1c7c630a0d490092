"""Routing cost with several ingresses: Ray's shared prefix tree against cacheroute.

    python -m bench.shared_tree --ingresses 1,2,4 --n 300 --json out/shared_tree.json \\
        --chart docs/benchmarks/img/shared-tree.png

Every Ray Serve ingress replica has its own request router. Ray's
``PrefixCacheAffinityRouter`` keeps its prefix tree in one named
``PrefixTreeActor`` per deployment that all of them share (``get_if_exists``),
and per request calls ``prefix_match`` and then ``insert`` on it with a blocking
``ray.get``. So its routers agree, and every decision of the fleet passes
through one single-threaded actor. cacheroute's routers share nothing: the ring
makes them agree on a new prefix, KV events on an owned one (the simulator's
``--ingresses`` measures what that agreement is worth in hit rate).

Per ingress count K, K caller actors (standing in for K ingress replicas'
routers) start together and each makes ``--n`` decisions back to back:

* ``ray-prefix``: ``prefix_match`` then ``insert`` on one shared
  ``PrefixTreeActor``, through ``ray.get``, as Ray's router does;
* ``cacheroute``: ``CacheAwarePolicy.select`` from token ids on the caller's own
  policy (block hashing, index probe, ring, learn).

Both start warm: the tree and each policy already hold every tenant's prefix.
Each decision is a tenant prefix plus a new question (``bench.decision_cost``'s
prompts, cut to ``--tokens`` with the default model's tokenizer). Reported per K
and policy: p50/p99 per decision as its caller saw it, and the fleet's decisions
per second (all decisions over the time from the common start to the last
caller's end). All callers share this machine's cores, so past the core count
both policies' latencies grow with K; the actor's throughput cannot grow at all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.decision_timing import (
    build_prompt_set,
    fixed_loads,
    replica_ids,
    start_local_ray,
)
from bench.machine import describe, machine_info
from bench.stats import percentile

POLICIES = ("ray-prefix", "cacheroute")
# Seconds between creating the callers and their common start: enough for every
# caller process to be up, so none starts late.
_START_DELAY_S = 3.0


class Caller:
    """One ingress's router, as a Ray actor (``ray.remote`` is applied at run time,
    so that importing this module needs no Ray)."""

    def ray_prefix(self, tree: Any, texts: list[str], tenants: list[str],
                   start_at: float) -> tuple[list[float], float]:
        import ray

        _sleep_until(start_at)
        samples = []
        clock = time.perf_counter
        for i, text in enumerate(texts):
            tick = clock()
            _, matched = ray.get(tree.prefix_match.remote(text, tenants))
            chosen = matched[0] if matched else tenants[i % len(tenants)]
            ray.get(tree.insert.remote(text, chosen, time.time()))
            samples.append(clock() - tick)
        return samples, time.time()

    def cacheroute(self, prompts: list[tuple[int, ...]], prefixes: list[tuple[int, ...]],
                   replicas: list[str], block_size: int,
                   start_at: float) -> tuple[list[float], float]:
        from router import CacheAwarePolicy, PolicyConfig, RouteRequest

        policy = CacheAwarePolicy(PolicyConfig(block_size=block_size, hash_seed="0"),
                                  replicas=replicas)
        loads = fixed_loads(replicas)
        for prefix in prefixes:  # warm, as the tree is
            policy.select(RouteRequest(token_ids=prefix), loads)
        requests = [RouteRequest(token_ids=ids) for ids in prompts]
        _sleep_until(start_at)
        samples = []
        clock = time.perf_counter
        for request in requests:
            tick = clock()
            policy.select(request, loads)
            samples.append(clock() - tick)
        return samples, time.time()


def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)


def run_point(policy: str, ingresses: int, prompts: Any, *, n: int, replicas: int,
              block_size: int) -> dict[str, Any]:
    """K callers of one policy, started together; their latencies and the fleet rate."""
    import ray

    from serving.ray_private import PrefixTreeActor

    remote_caller = ray.remote(num_cpus=0)(Caller)
    callers = [remote_caller.remote() for _ in range(ingresses)]  # type: ignore[attr-defined]
    tenants = replica_ids(replicas)
    # Caller k makes decisions k*n .. k*n+n-1: distinct questions, shared prefixes.
    # Each policy gets only its own form of them (4k-token id tuples add up).
    prompt = prompts.text if policy == "ray-prefix" else prompts.ids
    inputs = [[prompt(k * n + i) for i in range(n)] for k in range(ingresses)]
    tree = None
    try:
        if policy == "ray-prefix":
            tree = PrefixTreeActor.remote()  # type: ignore[attr-defined]
            ray.get(tree.add_tenants.remote(tenants, time.time()))
            for j, text in enumerate(prompts.timed_texts):
                ray.get(tree.insert.remote(text, tenants[j % replicas], time.time()))
        ray.get([c.__ray_ready__.remote() for c in callers])
        start_at = time.time() + _START_DELAY_S
        if policy == "ray-prefix":
            futures = [c.ray_prefix.remote(tree, inputs[k], tenants, start_at)
                       for k, c in enumerate(callers)]
        else:
            futures = [c.cacheroute.remote(inputs[k], prompts.timed_ids, tenants, block_size,
                                           start_at) for k, c in enumerate(callers)]
        results = ray.get(futures)
    finally:
        for actor in [*callers, *([tree] if tree is not None else [])]:
            ray.kill(actor)
    samples_us = [s * 1e6 for caller_samples, _ in results for s in caller_samples]
    wall_s = max(end for _, end in results) - start_at
    return {"policy": policy, "ingresses": ingresses, "decisions": len(samples_us),
            "p50_us": round(percentile(samples_us, 50), 1),
            "p99_us": round(percentile(samples_us, 99), 1),
            "decisions_per_s": round(len(samples_us) / wall_s, 1) if wall_s > 0 else None,
            "wall_s": round(wall_s, 3)}


def markdown(points: Sequence[dict[str, Any]]) -> str:
    out = ["| ingresses | policy | p50 µs | p99 µs | fleet decisions/s |",
           "|---:|---|---:|---:|---:|"]
    for p in points:
        out.append(f"| {p['ingresses']} | {p['policy']} | {p['p50_us']:,.1f} | "
                   f"{p['p99_us']:,.1f} | {p['decisions_per_s']:,.0f} |")
    return "\n".join(out)


def write_chart(path: Path, points: Sequence[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, policy in enumerate(POLICIES):
        mine = sorted((p for p in points if p["policy"] == policy), key=lambda p: p["ingresses"])
        if not mine:
            continue
        xs = [p["ingresses"] for p in mine]
        color = f"C{index}"
        rate.plot(xs, [p["decisions_per_s"] for p in mine], marker="o", color=color,
                  label=policy)
        latency.plot(xs, [p["p50_us"] for p in mine], marker="o", color=color,
                     label=f"{policy} p50")
        latency.plot(xs, [p["p99_us"] for p in mine], "--", marker="x", color=color,
                     label=f"{policy} p99")
    counts = sorted({p["ingresses"] for p in points})
    for axis in (rate, latency):
        axis.set_xlabel("ingress instances (routers deciding at once)")
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(k) for k in counts])
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    rate.set_ylabel("decisions per second, whole fleet (log)")
    rate.set_title("Routing throughput")
    latency.set_ylabel("µs per decision (log)")
    latency.set_title("Decision latency, p50 (solid) and p99 (dashed)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _counts(text: str) -> list[int]:
    values = [_positive(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.shared_tree",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--ingresses", type=_counts, default=[1, 2, 4],
                   help="comma-separated ingress counts (default 1,2,4)")
    p.add_argument("--n", type=_positive, default=300, help="decisions per caller")
    p.add_argument("--tokens", type=_positive, default=1024, help="prompt size in tokens")
    p.add_argument("--replicas", type=_positive, default=2, help="replicas (tree tenants)")
    p.add_argument("--block-size", type=_positive, default=128)
    p.add_argument("--tenants", type=_positive, default=16, help="tenant prefixes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", help="tokenizer directory (default: the embedded model)")
    p.add_argument("--json", type=Path, help="write the points here")
    p.add_argument("--chart", type=Path, help="write a PNG chart here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from serving.models.default import ensure_default_model
    from serving.routing.prompt_tokens import PromptTokenizer

    machine = machine_info()
    print(f"machine: {describe(machine)}", file=sys.stderr)
    tokenizer = PromptTokenizer(args.model_dir or str(ensure_default_model())).tokenizer
    most = max(args.ingresses)
    prompts = build_prompt_set(tokenizer, args.tokens, timed_tenants=args.tenants,
                               warm_tenants=0, questions=most * args.n, seed=args.seed)
    points = []
    with tqdm(total=len(args.ingresses) * len(POLICIES), unit="run", desc="shared tree",
              file=sys.stderr) as bar:
        bar.set_postfix_str("starting a local Ray")
        start_local_ray()
        import ray

        try:
            for ingresses in args.ingresses:
                for policy in POLICIES:
                    bar.set_postfix_str(f"{policy}, {ingresses} ingresses")
                    points.append(run_point(policy, ingresses, prompts, n=args.n,
                                            replicas=args.replicas,
                                            block_size=args.block_size))
                    bar.update(1)
        finally:
            ray.shutdown()
    print(f"Machine: {describe(machine)}\n")
    print(markdown(points))
    title = (f"{args.tokens}-token prompts, {args.tenants} tenants, {args.replicas} replicas, "
             f"{args.n} decisions per ingress; {describe(machine)}")
    if args.chart is not None:
        write_chart(args.chart, points, title)
        print(f"wrote {args.chart}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": machine,
            "command": shlex.join(["python", "-m", "bench.shared_tree", *argv]),
            "points": points,
        }, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
