"""Prometheus series of the document service, on the app's /metrics registry.

Labels are bounded: ``order`` (document | similarity) and ``reason`` (idle | limit |
deleted); no per-document label (documents are many and short-lived; per-document
counts are in ``GET /v1/documents/{id}``). The chunk cache hit rate is
``cacheroute_document_cached_tokens_total / cacheroute_document_prompt_tokens_total``:
the engine's own `cached_tokens` over the prompt tokens of document questions.
Declared as every app metric is (serving/observability/metrics.py).
"""

from __future__ import annotations

from serving.observability.metrics import MetricSet, counter, gauge, histogram

# Context assembly is milliseconds (an embedding and a tokenisation); an answer on a
# CPU replica is a fraction of a second to tens of seconds under load.
_ASSEMBLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_ASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
_UPLOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class DocumentMetrics(MetricSet):
    documents = gauge("cacheroute_documents", "Documents held by this ingress.")
    prompt_tokens = counter("cacheroute_document_prompt_tokens",
                            "Prompt tokens of document questions.", ["order"])
    cached_tokens = counter(
        "cacheroute_document_cached_tokens", "Of those, tokens the engine served from "
        "its prefix cache (usage.prompt_tokens_details.cached_tokens).", ["order"])
    assembly_seconds = histogram(
        "cacheroute_document_assembly_seconds", "Context assembly per question: question "
        "embedding, ranking, selection, rendering and token checks.", ["order"],
        buckets=_ASSEMBLY_BUCKETS)
    ask_seconds = histogram(
        "cacheroute_document_ask_seconds", "Document questions end to end in the "
        "ingress, assembly plus the answer.", ["order"], buckets=_ASK_BUCKETS)
    upload_seconds = histogram(
        "cacheroute_document_upload_seconds", "Uploads: chunking, embedding and the "
        "anchor's prewarm.", buckets=_UPLOAD_BUCKETS)
    evictions = counter("cacheroute_document_evictions", "Documents dropped, by reason.",
                        ["reason"])
