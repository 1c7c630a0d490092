"""Two ``router/`` trees' decision rates, interleaved in one process.

    python -m bench.decision_rate_ab OLD_TREE NEW_TREE --replicas 1000

On a shared machine the rate of one run moves with what else runs, by more than a
change to the router may gain. So both trees (folders holding a ``router/``, e.g.
``git archive <commit> router | tar -x -C OLD_TREE``) run here side by side on the
stream of ``bench.decision_rate`` (same tenants, same in-flight model), alternating
batches of 250 decisions, and each decision is timed as there: both then meet the
same load. Also checks that both choose the same replica with the same outcome for
every request. Prints each tree's rate and their ratio (new over old). ``--between
K``: K unrelated objects read before each decision, untimed, for the rate amid
other work (``bench/cache_pressure.py``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from bench.cache_pressure import unrelated_reads

_BATCH = 250


def _router_modules() -> dict[str, ModuleType]:
    return {name: module for name, module in sys.modules.items()
            if name == "router" or name.startswith("router.")}


def _load_router(tree: str) -> tuple[ModuleType, ModuleType]:
    """``router`` and ``router.load`` imported from ``tree``, apart from any other;
    the ``router`` modules already imported are put back afterwards, so that the
    rest of the process keeps its own."""
    before = _router_modules()
    for name in before:
        del sys.modules[name]
    sys.path.insert(0, tree)
    try:
        return importlib.import_module("router"), importlib.import_module("router.load")
    finally:
        sys.path.remove(tree)
        for name in _router_modules():
            del sys.modules[name]
        sys.modules.update(before)


def compare(trees: Sequence[str], replicas: int, decisions: int, *,
            between: int = 0) -> list[float]:
    """Decisions per second of each tree, on one interleaved stream."""
    read_unrelated = unrelated_reads(between)
    rng = random.Random("decision-rate:0")  # bench.decision_rate's stream
    tenants = [[rng.getrandbits(64) for _ in range(10)] for _ in range(2 * replicas)]
    picks = rng.choices(range(len(tenants)),
                        weights=[(r + 1) ** -1.1 for r in range(len(tenants))], k=decisions)
    chains = [[*tenants[p], rng.getrandbits(64)] for p in picks]
    ids = [f"replica-{i:04d}" for i in range(replicas)]
    runs: list[dict[str, Any]] = []
    for tree in trees:
        router, load = _load_router(tree)
        now = [0.0]
        policy = router.CacheAwarePolicy(router.PolicyConfig(block_size=128), replicas=ids,
                                         clock=lambda now=now: now[0])
        runs.append({"policy": policy, "in_flight": load.InFlightCounts(policy.replicas),
                     "now": now, "request": router.RouteRequest(), "running": deque(),
                     "spent": 0.0, "chosen": []})
    perf = time.perf_counter
    gc.disable()
    try:
        for start in range(0, decisions, _BATCH):
            # Alternate which tree goes first, so neither always follows the other.
            for run in runs if (start // _BATCH) % 2 == 0 else runs[::-1]:
                select = run["policy"].select_hashed
                in_flight, now, request = run["in_flight"], run["now"], run["request"]
                running, chosen = run["running"], run["chosen"]
                spent = 0.0
                for number in range(start, min(start + _BATCH, decisions)):
                    now[0] = number * 0.001
                    read_unrelated()
                    tick = perf()
                    decision = select(request, chains[number], in_flight)
                    spent += perf() - tick
                    replica = decision.replica_id
                    chosen.append((replica, decision.outcome.value))
                    in_flight.add(replica, 1)
                    running.append(replica)
                    if len(running) > 3 * replicas:
                        in_flight.add(running.popleft(), -1)
                run["spent"] += spent
    finally:
        gc.enable()
    if any(run["chosen"] != runs[0]["chosen"] for run in runs):
        raise AssertionError("the trees decided differently")
    return [decisions / run["spent"] for run in runs]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decision_rate_ab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="a folder holding the old router/")
    p.add_argument("new", help="a folder holding the new router/")
    p.add_argument("--replicas", type=int, default=1000)
    p.add_argument("--decisions", type=int, default=40_000)
    p.add_argument("--between", type=int, default=0, metavar="K",
                   help="objects of unrelated memory read before each decision, untimed")
    args = p.parse_args(argv)
    if args.between < 0:
        p.error(f"--between must be >= 0, got {args.between}")
    old, new = compare([args.old, args.new], args.replicas, args.decisions,
                       between=args.between)
    print(f"| {args.replicas:,} | {old:,.0f} | {new:,.0f} | {new / old:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
