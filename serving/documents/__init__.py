"""Document analysis: long documents chunked, embedded and prewarmed once, then asked
about many times with contexts assembled from their chunks (docs/documents.md).

Pure parts (no Ray, vLLM or torch): ``chunking``, ``assembly``, ``eviction``,
``index``. ``embedding`` loads the sentence-embedding model; ``service`` ties them to
the prefix registry; ``api`` is the HTTP face mounted on the ingress.
"""
