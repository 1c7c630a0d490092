"""Document analysis: long documents chunked, embedded and prewarmed once, then asked
about many times with contexts assembled from their chunks (docs/documents.md).

Pure parts (no Ray, vLLM or torch): ``chunking``, ``assembly``, ``sections``,
``eviction``, ``index``. ``embedding`` loads the sentence-embedding model;
``anchors`` keeps a document's cached anchors in the prefix registry and the router;
``service`` ties them together; ``legs`` answers a question from several sections
(map-reduce); ``api`` is the HTTP face mounted on the ingress.
"""
