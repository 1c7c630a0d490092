"""The real parts the document service runs on: the bundled sentence-embedding model
(offline) and the served model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.documents.api import ServingTokenizer
from serving.documents.embedding import MiniLMEmbedder
from serving.documents.index import VectorIndex
from serving.models.default import default_model_path
from serving.routing.prompt_tokens import load_tokenizer


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
    assert tok.chat_tokens(messages, "salt") == len(hf.encode(rendered, add_special_tokens=False))


def _shared_blocks(prompts: list[tuple[int, ...]], block: int = 128) -> int:
    """Tokens each prompt could find cached from the prompts before it (longest common
    prefix, whole blocks, the last token never cached): an engine with room for all."""
    total = 0
    for n, ids in enumerate(prompts):
        best = 0
        for earlier in prompts[:n]:
            common = 0
            for a, b in zip(ids[:-1], earlier):
                if a != b:
                    break
                common += 1
            best = max(best, common)
        total += best // block * block
    return total


@pytest.mark.parametrize("path", _default_tokenizer(), ids=lambda p: p.name)
def test_document_order_shares_more_cached_prefix_than_similarity_order(path: Path) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from bench.documents_qa import DocumentSpec, make_documents
    from serving.config import ServiceConfig
    from serving.documents.api import _Chat, document_settings
    from serving.documents.assembly import Order
    from serving.documents.metrics import DocumentMetrics
    from serving.documents.service import DocumentService
    from serving.routing.prompt_tokens import PromptTokenizer
    from tests.unit.serving.prefixes.prefix_fakes import (
        OWNER,
        FakeBackend,
        make_registry,
        make_store,
    )

    settings = document_settings(ServiceConfig.model_validate(
        {"engine": {"max_model_len": 2048}}), frozenset({"m"}))
    registry = make_registry(make_store(max_prefixes=8, max_total_tokens=10**7), FakeBackend(),
                             max_prefix_tokens=10**6)
    service = DocumentService(settings=settings, registry=registry,
                              tokenizer=ServingTokenizer(str(path)), embedder=MiniLMEmbedder(),
                              metrics=DocumentMetrics(CollectorRegistry()))
    prompt = PromptTokenizer(str(path))
    text = make_documents(DocumentSpec(documents=1))[0].text  # ~2.4k tokens: excerpts
    questions = [f"What does section {n} say about the {topic}?"
                 for n, topic in [(3, "refund policy"), (4, "refund deadline"),
                                  (3, "refund fees"), (12, "audit log"), (13, "audit owner")]]

    async def prompts(order: Order) -> list[tuple[int, ...]]:
        doc, _ = await service.upload(owner=OWNER, model="m", text=text, name="guide")
        plans = [await service.plan(doc.id, owner=OWNER.name, question=q, max_tokens=8, order=order)
                 for q in questions]
        return [prompt.token_ids(_Chat(p.messages, add_generation_prompt=True))
                for p in plans]

    document = asyncio.run(prompts(Order.DOCUMENT))
    naive = asyncio.run(prompts(Order.SIMILARITY))
    shared = (_shared_blocks(document), _shared_blocks(naive))
    print(f"shared prefix tokens: document order {shared[0]}, similarity order {shared[1]}; "
          f"prompt tokens {sum(map(len, document))} and {sum(map(len, naive))}")
    assert shared[0] > shared[1]
