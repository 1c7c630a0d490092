"""Routing decisions per second of ``CacheAwarePolicy`` alone, against the replica count.

    python -m bench.decision_rate --replicas 2,16,128,1000

The policy's core with nothing else in the loop: per replica count N, 2N tenants
with 10-block prompts (Zipf 1.1 popularity) plus one new block per request, and
3N requests in flight (each decision adds one at the chosen replica, the oldest
finishes). Only the decision is timed (``time.perf_counter`` around each call):
``select`` after hashing, i.e. the index probe, the owner choice, the ring and
``learn``. Each count runs ``--repeat`` times and the best run is reported: on a
shared machine the slower runs measure other jobs. The simulator's own
``decisions_per_s`` (``cacheroute sim``) adds the Serve tier pick and runs amid
the engines' work.

``--between K`` reads K unrelated objects before each decision, outside the timing
(``bench/cache_pressure.py``): the work a server or the simulator's engine model
does between decisions, which pushes the router's data out of the CPU's private
caches.

Runs against an older ``router/`` too (one without ``select_hashed`` or
``InFlightCounts``), to compare: from a folder holding that ``router/``, run
``PYTHONPATH=<this repository> python -m bench.decision_rate``.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from bench.cache_pressure import unrelated_reads
from router import BlockHash, CacheAwarePolicy, PolicyConfig, RouteRequest


def decision_rate(replicas: int, decisions: int, *, seed: int = 0, between: int = 0) -> float:
    ids = [f"replica-{i:04d}" for i in range(replicas)]
    now = [0.0]
    policy = CacheAwarePolicy(PolicyConfig(block_size=128), replicas=ids, clock=lambda: now[0])
    try:
        from router import InFlightCounts

        in_flight: Any = InFlightCounts(policy.replicas)
        add = in_flight.add
    except ImportError:  # an older core: a plain dict
        in_flight = dict.fromkeys(ids, 0)

        def add(replica: str, delta: int) -> None:
            in_flight[replica] += delta

    rng = random.Random(f"decision-rate:{seed}")
    tenants = [[BlockHash(rng.getrandbits(64)) for _ in range(10)] for _ in range(2 * replicas)]
    picks = rng.choices(range(len(tenants)),
                        weights=[(r + 1) ** -1.1 for r in range(len(tenants))], k=decisions)
    chains = [[*tenants[p], BlockHash(rng.getrandbits(64))] for p in picks]
    request = RouteRequest()
    if hasattr(policy, "select_hashed"):
        def decide(hashes: list[BlockHash]) -> str:
            return policy.select_hashed(request, hashes, in_flight).replica_id
    else:  # select() after its hashing step, as the older core does it
        def decide(hashes: list[BlockHash]) -> str:
            with policy._lock:
                decision = policy._decide(request, hashes, None, in_flight)
                policy._index.learn(decision.replica_id, hashes)
            return decision.replica_id

    running: deque[str] = deque()
    spent = 0.0
    perf = time.perf_counter
    read_unrelated = unrelated_reads(between)
    gc.disable()
    try:
        for number, hashes in enumerate(chains):
            now[0] = number * 0.001
            read_unrelated()
            tick = perf()
            chosen = decide(hashes)
            spent += perf() - tick
            add(chosen, 1)
            running.append(chosen)
            if len(running) > 3 * replicas:
                add(running.popleft(), -1)
    finally:
        gc.enable()
    return decisions / spent


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decision_rate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", default="2,16,128,1000", help="comma-separated counts")
    p.add_argument("--decisions", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--between", type=int, default=0, metavar="K",
                   help="objects of unrelated memory read between two decisions, untimed "
                        "(default 0; the simulator is like about 2000)")
    args = p.parse_args(argv)
    if args.between < 0:
        p.error(f"--between must be >= 0, got {args.between}")
    import router

    print(f"router: {router.__file__}", file=sys.stderr)
    print("| replicas | decisions/s |\n|---:|---:|")
    for count in (int(x) for x in args.replicas.split(",")):
        best = max(decision_rate(count, args.decisions, between=args.between)
                   for _ in range(args.repeat))
        print(f"| {count:,} | {best:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
