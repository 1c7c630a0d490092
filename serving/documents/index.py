"""Exact nearest-chunk search over one document's embeddings.

Vectors are L2-normalised when stored, so cosine similarity is one matrix-vector
product; the ranking is a stable argsort (ties keep document order, so the result is
deterministic). Cost per query: O(chunks x dimensions) -- for a 100k-token document
in 200-token chunks, 500 x 384 multiply-adds, well under a millisecond, far below the
question's own embedding (milliseconds) -- so no approximate index (FAISS, HNSW) is
worth its dependency at this scale.
"""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


class VectorIndex:
    def __init__(self, vectors: np.ndarray) -> None:
        self._vectors = normalise(vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def nbytes(self) -> int:
        return int(self._vectors.nbytes)

    def similarities(self, query: np.ndarray) -> np.ndarray:
        return self._vectors @ normalise(query)[0]

    def ranked(self, query: np.ndarray) -> list[int]:
        """Row indices, most similar first; ties in row (document) order."""
        return [int(i) for i in np.argsort(-self.similarities(query), kind="stable")]
