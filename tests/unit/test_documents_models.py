"""The real parts the document service runs on: the bundled sentence-embedding model
(offline) and the served model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.documents.api import ServingTokenizer
from serving.documents.embedding import MiniLMEmbedder
from serving.documents.index import VectorIndex
from serving.models import default_model_path
from serving.prompt_tokens import load_tokenizer


def test_minilm_embeds_offline_and_ranks_the_related_passage_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    passages = ["Quarterly revenue rose by ten percent on strong subscription sales.",
                "The turbine blades must be inspected for cracks every six months.",
                "Employees may carry over five days of unused holiday into next year."]
    embedder = MiniLMEmbedder()
    vectors = embedder.embed(passages)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index = VectorIndex(vectors)
    for question, best in [("How often are the blades checked?", 1),
                           ("Can I keep vacation days I did not use?", 2),
                           ("How did sales grow this quarter?", 0)]:
        assert index.ranked(embedder.embed([question])[0])[0] == best


def test_index_ranks_ties_in_document_order() -> None:
    index = VectorIndex(np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32))
    assert index.ranked(np.array([1, 0], dtype=np.float32)) == [0, 2, 1]


def _default_tokenizer() -> list[Path]:
    path = default_model_path()
    return [path] if (path / "tokenizer.json").is_file() else []


@pytest.mark.parametrize("path", _default_tokenizer(), ids=lambda p: p.name)
def test_serving_tokenizer_counts_as_the_engine_does(path: Path) -> None:
    tok = ServingTokenizer(str(path))
    hf = load_tokenizer(str(path))
    texts = ["Section 1: the harbour.", "", "Ünïcode and  spaces\n\nacross lines."]
    assert tok.count(texts) == [len(hf.encode(t, add_special_tokens=False)) for t in texts]
    messages = [{"role": "system", "content": "Doc."}, {"role": "user", "content": "Why?"}]
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert tok.chat_tokens(messages) == len(hf.encode(rendered, add_special_tokens=False))
