"""DocumentService over the real prefix registry and routing policy (fake engine,
tokenizer and embedder: tests/unit/serving/documents/document_fakes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest

from router import RouteRequest
from serving.documents.assembly import Mode, Order
from serving.documents.service import DocumentError
from tests.unit.serving.documents.document_fakes import (
    TOPICS,
    WordTokenizer,
    long_document,
    make_service,
)
from serving.tenants.config import TenantLimits
from serving.tenants.identity import Tenant
from tests.unit.serving.prefixes.prefix_fakes import MODEL, OTHER, OWNER


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def refuse(status: int, code: str) -> Any:
    return pytest.raises(DocumentError, check=lambda e: (e.status, e.code) == (status, code))


SHORT = long_document(paragraphs=3)  # about 150 words: fits a 400-token window
LONG = long_document(paragraphs=12)  # about 600 words: does not


def test_a_short_document_is_prewarmed_whole_on_its_ring_home() -> None:
    service, backend, _ = make_service()

    async def body() -> None:
        doc, created = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        assert created and doc.anchor_mode is Mode.WHOLE and doc.id.startswith("doc-")
        assert doc.prefix_key is not None and doc.cacheable_tokens > 0
        (model, messages, salt), = backend.prewarms
        # Under the owner's salt: the anchor's blocks are the owning tenant's alone.
        assert (model, salt) == (MODEL, OWNER.cache_salt())
        assert messages[0]["content"].endswith(SHORT)
        # The prewarm went through the policy: one replica owns every anchor block.
        assert len(service.holders(doc)) == 1
        again, created = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        assert again is doc and not created and len(backend.prewarms) == 1

        plan = await service.plan(doc.id, owner=OWNER.name,
                                  question="What about the harbour?", max_tokens=8)
        assert plan.selection.mode is Mode.WHOLE
        assert plan.messages[0] == messages[0]  # the question starts with the anchor
        ids = await backend.token_ids(plan.messages[:1], salt)
        placement = backend.policy.placement(RouteRequest(token_ids=ids, cache_salt=salt))
        assert placement is not None and placement.holders == frozenset(service.holders(doc))

    run(body)


def test_a_long_document_is_cut_into_prewarmed_sections_and_asks_go_to_their_section() -> None:
    service, backend, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        assert doc.anchor_mode is Mode.SECTIONS and len(doc.sections) >= 2
        # Each section is registered and prewarmed as an anchor of its own, under the
        # owner's salt.
        prewarmed = [m[0]["content"] for _, m, _ in backend.prewarms]
        assert len(prewarmed) == len(doc.sections)
        assert {salt for _, _, salt in backend.prewarms} == {OWNER.cache_salt()}
        assert all(a.prefix_key is not None and a.cacheable_tokens > 0 for a in doc.sections)
        assert len({a.prefix_key for a in doc.sections}) == len(doc.sections)
        for anchor, content in zip(doc.sections, prewarmed):
            assert len(service.anchors.placement(anchor.token_ids, doc.salt)[1]) == 1
            # Each fits the window with the answer reserve (fake: 4 + words).
            assert 4 + len(content.split()) <= 400 - 60
        for topic in ("harbour", "violin"):
            plan = await service.plan(doc.id, owner=OWNER.name,
                                      question=f"Tell me about the {topic} keeper.",
                                      max_tokens=8)
            assert plan.selection.mode is Mode.SECTIONS and len(plan.legs) == 1
            leg = plan.legs[0]
            # The section holding the topic answers, from its exact prewarmed anchor.
            assert topic in plan.messages[0]["content"]
            assert plan.messages[0]["content"] == prewarmed[leg.section]
            assert plan.messages[1] == {"role": "user",
                                        "content": f"Question: Tell me about the {topic} keeper."}
            words = sum(4 + len(m["content"].split()) for m in plan.messages)
            assert words + 16 + plan.max_tokens <= service.settings.max_model_len
        assert doc.kept_tokens >= doc.tokens  # overlaps count in each section

    run(body)


def test_a_question_near_two_sections_is_answered_from_both() -> None:
    service, _, _ = make_service(leg_similarity_margin=0.1)

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        plan = await service.plan(doc.id, owner=OWNER.name, question="The harbour and the violin?",
                                  max_tokens=8)
        assert len(plan.legs) == 2 and plan.messages == plan.legs[0].messages
        assert {leg.section for leg in plan.legs} == {0, len(doc.sections) - 1}
        capped, _, _ = make_service(leg_similarity_margin=2.0, max_section_legs=1)
        other, _ = await capped.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        one = await capped.plan(other.id, owner=OWNER.name,
                                question="The harbour and the violin?", max_tokens=8)
        assert len(one.legs) == 1

    run(body)


def test_similarity_order_drops_the_anchor() -> None:
    service, _, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        plan = await service.plan(doc.id, owner=OWNER.name,
                                  question="The violin and the canyon?", max_tokens=8,
                                  order=Order.SIMILARITY)
        assert plan.selection.order is Order.SIMILARITY
        assert "manual" not in plan.messages[0]["content"]

    run(body)


def test_delete_drops_the_prefix_and_the_routers_ownership() -> None:
    service, backend, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        assert service.holders(doc)
        await service.delete(doc.id, OWNER.name)
        assert service.holders(doc) == []
        assert await service._registry.records(OWNER.name) == []
        with refuse(404, "not_found"):
            service.get(doc.id, OWNER.name)
        with refuse(404, "not_found"):
            await service.delete(doc.id, OWNER.name)

    run(body)


def test_eviction_keeps_busy_documents_and_forgets_the_victims_blocks() -> None:
    service, backend, clock = make_service(max_documents=2)

    async def body() -> None:
        texts = {t: long_document(paragraphs=2).replace("harbour", t) for t in TOPICS[:3]}
        docs = {}
        for topic, text in texts.items():
            docs[topic], _ = await service.upload(owner=OWNER, model=MODEL, text=text, name=topic)
            clock.advance(10)
            if topic == TOPICS[0]:
                for _ in range(3):  # asked about: relevant
                    plan = await service.plan(docs[topic].id, owner=OWNER.name,
                                              question="Why?", max_tokens=4)
                    service.observe(plan, prompt_tokens=100, cached_tokens=64, elapsed_s=0.1)
        kept = {d.name for d in service.documents(OWNER.name)}
        assert kept == {TOPICS[0], TOPICS[2]}
        assert service.holders(docs[TOPICS[1]]) == []
        assert len(await service._registry.records(OWNER.name)) == 2
        clock.advance(3601)  # idle past idle_ttl_s: stale
        assert await service.sweep() == 2 and service.documents(OWNER.name) == []

    run(body)


@pytest.mark.parametrize(("fields", "status", "code"), [
    ({"model": "other"}, 404, "model_not_found"),
    ({"text": "   \n "}, 400, "invalid_request"),
    ({"text": "word " * 50_000}, 413, "request_too_large"),
])
def test_bad_uploads(fields: dict, status: int, code: str) -> None:
    service, _, _ = make_service()
    args = {"model": MODEL, "text": SHORT, "name": None, **fields}
    with refuse(status, code):
        run(lambda: service.upload(owner=OWNER, **args))


def test_too_many_tokens_and_bad_questions() -> None:
    service, _, _ = make_service(max_total_tokens=100)
    with refuse(413, "request_too_large"):
        run(lambda: service.upload(owner=OWNER, model=MODEL, text=SHORT, name=None))
    service, _, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name=None)
        with refuse(400, "invalid_request"):
            await service.plan(doc.id, owner=OWNER.name, question="  ", max_tokens=None)
        with refuse(400, "invalid_request"):
            await service.plan(doc.id, owner=OWNER.name, question="x" * 501, max_tokens=None)
        with refuse(400, "invalid_request"):
            await service.plan(doc.id, owner=OWNER.name, question="Why?", max_tokens=390)
        with refuse(404, "not_found"):
            await service.plan("doc-" + "0" * 32, owner=OWNER.name,
                               question="Why?", max_tokens=None)

    run(body)


def test_a_question_too_long_for_the_whole_document_falls_back_to_excerpts() -> None:
    service, backend, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        assert doc.anchor_mode is Mode.WHOLE
        plan = await service.plan(doc.id, owner=OWNER.name, question="Why?", max_tokens=300)
        assert plan.selection.mode is Mode.EXCERPTS
        whole = backend.prewarms[0][1][0]["content"]
        # The lead is a head of the prewarmed whole document: its blocks are shared.
        assert whole.startswith(plan.messages[0]["content"])
        assert len(plan.messages[0]["content"]) < len(whole)

    run(body)


def test_observe_counts_and_renews_an_aging_registration() -> None:
    service, backend, clock = make_service(idle_ttl_s=100.0)

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        plan = await service.plan(doc.id, owner=OWNER.name, question="Why?", max_tokens=4)
        service.observe(plan, prompt_tokens=200, cached_tokens=128, elapsed_s=0.5)
        assert (doc.asks, doc.prompt_tokens, doc.cached_tokens) == (1, 200, 128)
        clock.advance(60)  # over half the registration's TTL
        service.observe(plan, prompt_tokens=200, cached_tokens=192, elapsed_s=0.5)
        await asyncio.gather(*list(service._pending))
        assert len(backend.prewarms) == 2

    run(body)


def test_a_shared_section_stays_until_its_last_document_goes() -> None:
    service, _, _ = make_service()

    async def body() -> None:
        # Same name and opening: one first section, two documents.
        first, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        second, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG + "\n\nAppendix.",
                                         name="manual")
        assert first.id != second.id
        assert first.sections[0].prefix_key == second.sections[0].prefix_key
        assert first.sections[-1].prefix_key != second.sections[-1].prefix_key
        await service.delete(first.id, OWNER.name)
        keys = {r.key for r in await service._registry.records(OWNER.name)}
        assert keys == {a.prefix_key for a in second.sections}
        assert service.anchors.placement(second.sections[0].token_ids, second.salt)[1]
        await service.delete(second.id, OWNER.name)
        assert service.holders(second) == []
        assert await service._registry.records(OWNER.name) == []

    run(body)


def test_deleting_or_evicting_a_sectioned_document_forgets_every_section() -> None:
    service, _, clock = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        assert all(service.anchors.placement(a.token_ids, doc.salt)[1] for a in doc.sections)
        await service.delete(doc.id, OWNER.name)
        assert all(service.anchors.placement(a.token_ids, doc.salt)[1] == []
                   for a in doc.sections)
        assert await service._registry.records(OWNER.name) == []

        again, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        clock.advance(3601)
        assert await service.sweep() == 1
        assert service.holders(again) == [] and await service._registry.records(OWNER.name) == []

    run(body)


def test_sections_count_toward_the_token_bound() -> None:
    # Chunks repeat a 12-word sentence, so consecutive sections overlap.
    service, _, _ = make_service(chunk_overlap_tokens=16)

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        assert doc.usage().tokens == doc.kept_tokens > doc.tokens
        assert doc.kept_tokens == sum(a.token_end - a.token_start for a in doc.sections)
        tight, _, _ = make_service(chunk_overlap_tokens=16,
                                   max_total_tokens=doc.kept_tokens - 1)
        await tight.upload(owner=OWNER, model=MODEL, text=LONG, name="a")
        b, _ = await tight.upload(owner=OWNER, model=MODEL, text=LONG, name="b")
        assert [d.id for d in tight.documents(OWNER.name)] == [b.id]  # a's sections pushed it out

    run(body)


def test_earlier_turns_sit_between_the_document_and_the_question() -> None:
    service, _, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        first = await service.plan(doc.id, owner=OWNER.name,
                                   question="What about the harbour?", max_tokens=8)
        history = [{"role": "user", "content": "What about the harbour?"},
                   {"role": "assistant", "content": "It is closed."}]
        second = await service.plan(doc.id, owner=OWNER.name, question="Since when?", max_tokens=8,
                                    history=history)
        assert second.selection.mode is Mode.WHOLE
        # The second turn resends the first turn's prompt, then the answer: its prefix.
        assert second.messages[:2] == first.messages
        assert second.messages[2:] == [{"role": "assistant", "content": "It is closed."},
                                       {"role": "user", "content": "Question: Since when?"}]

        # Earlier turns take their tokens from the section: a long conversation
        # about a long document gets its section's head only, then no room.
        long_doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        alone = await service.plan(long_doc.id, owner=OWNER.name,
                                   question="Tell me about storms.", max_tokens=8)
        chatty = [{"role": "user", "content": "word " * 100},
                  {"role": "assistant", "content": "word " * 100}]
        crowded = await service.plan(long_doc.id, owner=OWNER.name,
                                     question="Tell me about storms.",
                                     max_tokens=8, history=chatty)
        assert crowded.legs[0].section == alone.legs[0].section
        assert crowded.legs[0].last_chunk < alone.legs[0].last_chunk
        # Trimmed at the tail only: the prompt still opens with the section's anchor.
        assert alone.messages[0]["content"].startswith(crowded.messages[0]["content"])
        with refuse(400, "invalid_request") as err:
            await service.plan(long_doc.id, owner=OWNER.name,
                               question="Tell me about storms.", max_tokens=8,
                               history=chatty * 3)
        assert "earlier turns" in err.value.message

    run(body)


class DenseChatTokenizer(WordTokenizer):
    """Chat messages cost a tenth more than their words: every cut by estimate is too
    large, as when the template or boundaries add tokens the chunk counts miss."""

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], salt: str) -> int:
        return int(super().chat_tokens(messages, salt) * 1.1)


def test_sections_over_the_window_by_exact_count_are_cut_again_smaller() -> None:
    service, backend, _ = make_service()
    service._tokenizer = service._anchors._tokenizer = DenseChatTokenizer()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        prewarmed = [m for _, m, _ in backend.prewarms]
        assert len(prewarmed) == len(doc.sections) >= 3  # more than the 2 of an exact count
        for messages in prewarmed:
            assert service._tokenizer.chat_tokens(messages, doc.salt) <= 400 - 60

    run(body)


# --- tenants ------------------------------------------------------------------------


def test_another_tenants_document_is_unknown_to_it() -> None:
    service, backend, _ = make_service()

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        unknown = "doc-" + "0" * 32
        for probe in (doc.id, unknown):
            with refuse(404, "not_found") as refused:
                service.get(probe, OTHER.name)
            assert refused.value.message == f"No document has id '{probe}'."
            with refuse(404, "not_found"):
                await service.plan(probe, owner=OTHER.name, question="Why?", max_tokens=4)
            with refuse(404, "not_found"):
                await service.delete(probe, OTHER.name)
        assert service.documents(OTHER.name) == []
        assert service.get(doc.id, OWNER.name) is doc  # still there, still acme's
        # The same upload by globex is a document of its own, prewarmed under its salt.
        theirs, created = await service.upload(owner=OTHER, model=MODEL, text=SHORT,
                                               name="memo")
        assert created and theirs.id != doc.id and theirs.prefix_key != doc.prefix_key
        assert [salt for _, _, salt in backend.prewarms] == [OWNER.cache_salt(),
                                                             OTHER.cache_salt()]
        assert service.documents(OTHER.name) == [theirs]
        assert service._tokenizer.salts == {OWNER.cache_salt(), OTHER.cache_salt()}

    run(body)


def test_a_document_that_cannot_be_cut_to_fit_is_refused() -> None:
    service, backend, _ = make_service(chunk_tokens=380, chunk_overlap_tokens=8)

    async def body() -> None:
        # One paragraph, one sentence: a single chunk bigger than any section.
        with refuse(400, "invalid_request") as err:
            await service.upload(owner=OWNER, model=MODEL, text="word " * 600,
                                 name="wall")
        assert "sections" in err.value.message and backend.prewarms == []

    run(body)


def test_a_tenant_over_its_document_quota_evicts_only_its_own() -> None:
    service, _, clock = make_service(max_documents=8)
    small = Tenant("globex", TenantLimits(max_documents=2))

    async def body() -> None:
        mine, _ = await service.upload(owner=OWNER, model=MODEL, text=SHORT, name="memo")
        clock.advance(10)
        texts = [long_document(paragraphs=2).replace("harbour", t) for t in TOPICS[:3]]
        theirs = []
        for i, text in enumerate(texts):
            doc, _ = await service.upload(owner=small, model=MODEL, text=text, name=f"g{i}")
            theirs.append(doc.id)
            clock.advance(10)
        assert [d.id for d in service.documents(small.name)] == theirs[:0:-1]
        assert service.documents(OWNER.name) == [mine]

    run(body)
