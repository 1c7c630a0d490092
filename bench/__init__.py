"""Benchmarks of cacheroute: the routing decision's cost, live policy comparisons, KV cost.

Modules, one concept each:

* ``decision_cost``: microbenchmark of ``CacheAwarePolicy.select`` (with and without
  tokenization) beside Ray's ``PrefixTree``, the structure behind
  ``PrefixCacheAffinityRouter`` (``python -m bench.decision_cost``).
* ``workloads``: seeded multi-tenant chat workloads (Zipf tenant popularity, long
  per-tenant system prompts, Poisson arrivals); ``chat_sessions`` (multi-turn chats
  resending their history) and ``documents_qa`` (few long documents, many questions).
* ``trace``: the JSONL trace format those workloads are saved in and replayed from.
* ``oracle``: the best hit rate any router could reach on a trace (infinite cache,
  and bounded by the fleet's KV capacity).
* ``service``: one ``cacheroute serve`` subprocess, started cold and stopped cleanly.
* ``replay``: sends a trace to a running service with the ``openai`` client and
  measures TTFT, end-to-end latency and cached tokens per request.
* ``service_metrics``: the service's ``/metrics`` before and after a run (engine hit
  rate, requests per replica, spills) and in-flight load sampled each second.
* ``policy_run``: one policy's cold service, measured run and clean stop.
* ``report``: per-policy summaries, the Markdown table and the PNG charts.
* ``live``: the end-to-end comparison (``cacheroute bench``, ``python -m bench.live``).
* ``vllm_client``: vLLM's own benchmark client (``prefix_repetition``) per policy.
* ``kvbench``: what the KV cache costs and saves per turn (``cacheroute kvbench``),
  with ``kv_conversation`` (the seeded chat), ``kv_size`` (cache bytes and the
  formula), ``kv_generate`` (one transformers mode, timed), ``kvbench_service``
  (the chat through the service, prefix caching on and off) and ``kvbench_report``.
* ``sim``: a package, the discrete-event simulator (``cacheroute sim``): the same
  policies and workloads on modelled engines, up to thousands of replicas.
* ``decision_rate``: ``CacheAwarePolicy`` decisions per second against the replica
  count, the core alone (``python -m bench.decision_rate``); ``decision_rate_ab``
  two ``router/`` trees interleaved; ``cache_pressure`` the unrelated reads both put
  between decisions (``--between``), as a server's or the simulator's other work does.
* ``stats`` and ``machine``: percentiles, and what machine a number came from.

Nothing here is imported by ``router/`` or ``serving/``; the main benchmarks write
result files (``results``, docs/benchmarks/README.md).
"""
