"""Discrete-event simulator of cacheroute and its alternatives on modelled engines.

The routing decisions are the real ones: ``cacheroute`` is ``router.CacheAwarePolicy``
unchanged (ring, bounded loads, ownership index, KV events), and the other
policies are models of Ray Serve's routers taken from their source. Only the
engines are modelled. Modules, one concept each:

* ``tokens``: prompt token ids, synthetic (fast) or the engine tokenizer's (exact).
* ``prompts``: a trace request reduced to length and block hashes; shared
  prefixes hashed once.
* ``block_cache``: one replica's KV blocks: prefix hits, pinning, LRU eviction.
* ``engine``: admission, prefill and decode timing of one replica; KV capacity
  from the model's geometry.
* ``char_tree``: the character prefix tree of Ray's prefix-aware router.
* ``routers``: one module per policy behind a one-method interface.
* ``loop``: the event loop; ``summary``: per-policy numbers, JSON and table.
* ``cli`` (``cacheroute sim``), ``calibrate`` (fit to a live run) and ``sweep``
  (the operator charts in docs/benchmarks/simulator.md).

Nothing in ``router/`` or ``serving/`` imports this package.
"""

from bench.sim.engine import EngineParams, kv_capacity_blocks
from bench.sim.loop import FleetParams, RunResult, simulate
from bench.sim.routers import POLICIES
from bench.sim.summary import SimSummary, summarise

__all__ = [
    "POLICIES",
    "EngineParams",
    "FleetParams",
    "RunResult",
    "SimSummary",
    "kv_capacity_blocks",
    "simulate",
    "summarise",
]
