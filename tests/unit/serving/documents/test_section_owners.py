"""Sections of a tenant's document: each section's anchor is registered, prewarmed,
placed and forgotten as its owner's, under its owner's salt; its legs are asked
under that salt; its kept tokens count toward its owner's quota; and through the
routes (tests/unit/serving/documents/test_api.py's host), another tenant cannot
see or ask it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi.testclient import TestClient

from serving.documents.api import DOCUMENT_HEADER
from serving.tenants.config import TenantLimits
from serving.tenants.identity import Tenant, tenant_salt
from tests.unit.serving.documents.document_fakes import long_document, make_service
from tests.unit.serving.documents.test_api import API_KEY, GLOBEX_KEY, Host
from tests.unit.serving.prefixes.prefix_fakes import MODEL, OTHER, OWNER

LONG = long_document(paragraphs=12)  # about 600 words: over the 400-token window


def run(body: Any) -> Any:
    return asyncio.run(body())


def test_two_tenants_sections_are_separate_anchors_under_their_own_salts() -> None:
    service, backend, _ = make_service()

    async def body() -> None:
        mine, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="manual")
        theirs, _ = await service.upload(owner=OTHER, model=MODEL, text=LONG, name="manual")
        assert len(mine.sections) == len(theirs.sections) >= 2 and mine.id != theirs.id
        salts = [salt for _, _, salt in backend.prewarms]
        assert salts == ([OWNER.cache_salt()] * len(mine.sections)
                         + [OTHER.cache_salt()] * len(theirs.sections))
        assert not ({a.prefix_key for a in mine.sections}
                    & {a.prefix_key for a in theirs.sections})
        records = await service._registry.records(OTHER.name)
        assert {r.key for r in records} == {a.prefix_key for a in theirs.sections}
        # Every question is counted and rendered under the owner's salt.
        service._tokenizer.salts.clear()
        plan = await service.plan(theirs.id, owner=OTHER.name,
                                  question="Tell me about the violin keeper.", max_tokens=8)
        assert plan.legs and service._tokenizer.salts == {OTHER.cache_salt()}

        # Deleting one tenant's copy forgets its sections only; the other's stay warm.
        await service.delete(theirs.id, OTHER.name)
        assert await service._registry.records(OTHER.name) == []
        assert all(service.anchors.placement(a.token_ids, theirs.salt)[1] == []
                   for a in theirs.sections)
        assert all(service.anchors.placement(a.token_ids, mine.salt)[1]
                   for a in mine.sections)
        assert len(await service._registry.records(OWNER.name)) == len(mine.sections)

    run(body)


def test_a_tenants_sections_count_toward_its_own_token_quota() -> None:
    service, _, clock = make_service(chunk_overlap_tokens=16)

    async def body() -> None:
        probe, _ = await service.upload(owner=OWNER, model=MODEL, text=LONG, name="probe")
        # Room for the text of two documents, not for the sections of two.
        quota = 2 * probe.tokens
        assert probe.kept_tokens <= quota < 2 * probe.kept_tokens
        small = Tenant("globex", TenantLimits(max_document_tokens=quota))
        await service.upload(owner=small, model=MODEL, text=LONG, name="a")
        clock.advance(10)
        second, _ = await service.upload(owner=small, model=MODEL, text=LONG, name="b")
        assert [d.id for d in service.documents(small.name)] == [second.id]
        assert service.documents(OWNER.name) == [probe]  # another tenant's quota

    run(body)


def test_another_tenant_can_neither_see_nor_ask_a_sectioned_document() -> None:
    from serving.config import ServiceConfig
    from serving.documents.api import DOCUMENT_ENDPOINTS
    from serving.ingress.ingress import build_fastapi_app

    host = Host(make_service(leg_similarity_margin=0.5)[0])
    app = build_fastapi_app(ServiceConfig.model_validate(
        {"server": {"api_keys": [API_KEY], "api_keys_env": None,
                    "tenants": {"globex": {"api_keys": [GLOBEX_KEY]}}}}))
    for name, route in DOCUMENT_ENDPOINTS.items():
        route(app)(getattr(host, name))
    app.post("/v1/chat/completions")(host.chat)
    globex = {"Authorization": f"Bearer {GLOBEX_KEY}"}
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        doc = client.post("/v1/documents", json={"model": MODEL, "text": LONG,
                                                 "name": "manual"}).json()
        assert doc["anchor"]["mode"] == "sections" and doc["sections"]
        assert tenant_salt("default") not in json.dumps(doc)  # the salt never leaves
        assert client.get(f"/v1/documents/{doc['id']}", headers=globex).status_code == 404
        assert client.get("/v1/documents", headers=globex).json()["data"] == []
        asked = client.post(f"/v1/documents/{doc['id']}/ask", headers=globex,
                            json={"question": "The harbour and the violin?"})
        assert asked.status_code == 404 and host.sent == []

        # The owner's chat naming it: every leg and the combine leave without the
        # client's cache_salt, so the ingress serves each under the owner's alone.
        chat = client.post("/v1/chat/completions", headers={DOCUMENT_HEADER: doc["id"]},
                           json={"model": MODEL, "cache_salt": "mine", "messages": [
                               {"role": "user", "content": "The harbour and the violin?"}]})
        assert chat.status_code == 200, chat.text
        assert len(host.sent) >= 3  # two legs or more, then the combine
        assert [getattr(b, "cache_salt", None) for b in host.sent] == [None] * len(host.sent)
