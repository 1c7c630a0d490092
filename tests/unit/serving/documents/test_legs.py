"""Map-reduce over sections: the legs' requests, the combine request, summed usage;
and through the routes (tests/unit/serving/documents/test_api.py's host), the
``document`` object naming the sections used, streamed and not."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi.testclient import TestClient
from starlette.responses import JSONResponse, Response

from serving.documents import legs
from serving.documents.legs import COMBINE_INSTRUCTION, LegAnswer
from serving.documents.sections import Leg
from tests.unit.serving.documents.document_fakes import long_document, make_service
from tests.unit.serving.documents.test_api import API_KEY, Host, sse_events
from tests.unit.serving.prefixes.prefix_fakes import MODEL, OWNER


def reply(content: str, prompt: int, cached: int) -> JSONResponse:
    return JSONResponse({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2,
                  "prompt_tokens_details": {"cached_tokens": cached}}})


def test_map_reduce_sends_each_leg_then_one_combine_over_their_answers() -> None:
    service, _, _ = make_service()
    sent: list[tuple[list[dict[str, str]], bool]] = []

    async def send(messages: list[dict[str, str]], as_asked: bool) -> Response:
        sent.append((messages, as_asked))
        if not as_asked:
            return reply(f"answer {len(sent)}", 300, 256)
        return reply("combined", 40, 0)

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=long_document(12),
                                      name="manual")
        planned = [Leg(section=1, last_chunk=doc.sections[1].section.last_chunk,
                       messages=[{"role": "user", "content": "leg one"}]),
                   Leg(section=0, last_chunk=doc.sections[0].section.last_chunk,
                       messages=[{"role": "user", "content": "leg zero"}])]
        response, answers = await legs.map_reduce(send, doc, planned, "Why?")
        assert [m for m, _ in sent[:2]] == [p.messages for p in planned]
        assert [a for _, a in sent] == [False, False, True]  # only the combine as asked
        combine = sent[2][0]
        assert combine[0] == {"role": "system", "content": COMBINE_INSTRUCTION}
        n = len(doc.sections)
        assert combine[1]["content"] == (f"From manual (part 2 of {n}): answer 1\n\n"
                                         f"From manual (part 1 of {n}): answer 2\n\n"
                                         "Question: Why?")
        assert [a.section for a in answers] == [1, 0]
        assert json.loads(bytes(response.body))["choices"][0]["message"]["content"] == "combined"

    asyncio.run(body())


def test_a_failed_leg_is_the_answer_and_nothing_is_combined() -> None:
    service, _, _ = make_service()
    sent: list[bool] = []

    async def send(messages: list[dict[str, str]], as_asked: bool) -> Response:
        sent.append(as_asked)
        if messages[0]["content"] == "bad":
            return JSONResponse({"error": {"message": "busy"}}, status_code=503)
        return reply("fine", 10, 0)

    async def body() -> None:
        doc, _ = await service.upload(owner=OWNER, model=MODEL, text=long_document(12),
                                      name="manual")
        planned = [Leg(section=i, last_chunk=0, messages=[{"role": "user", "content": c}])
                   for i, c in enumerate(("ok", "bad"))]
        response, answers = await legs.map_reduce(send, doc, planned, "Why?")
        assert response.status_code == 503 and answers == [] and True not in sent

    asyncio.run(body())


def test_usage_adds_the_legs_to_the_combine() -> None:
    usage: dict[str, Any] = {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}
    legs.add_usage(usage, [LegAnswer(section=0, answer="a", prompt_tokens=300,
                                     completion_tokens=2, cached_tokens=256),
                           LegAnswer(section=2, answer="b", prompt_tokens=200,
                                     completion_tokens=3, cached_tokens=128)])
    assert usage == {"prompt_tokens": 540, "completion_tokens": 10, "total_tokens": 550,
                     "prompt_tokens_details": {"cached_tokens": 384}}


class MapHost(Host):
    """Answers legs (not streamed) and the combine differently, to tell them apart."""

    async def send_chat(self, body: Any, request: Any) -> Any:
        if body.stream or body.messages[0]["content"] == COMBINE_INSTRUCTION:
            return await super().send_chat(body, request)
        self.sent.append(body)
        return reply("From its section.", 500, 384)


def make_client(host: Host) -> TestClient:
    from serving.config import ServiceConfig
    from serving.documents.api import DOCUMENT_ENDPOINTS
    from serving.ingress.ingress import build_fastapi_app

    app = build_fastapi_app(ServiceConfig.model_validate(
        {"server": {"api_keys": [API_KEY], "api_keys_env": None}}))
    for name, route in DOCUMENT_ENDPOINTS.items():
        route(app)(getattr(host, name))
    app.post("/v1/chat/completions")(host.chat)
    return TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"})


def test_a_question_over_two_sections_is_answered_by_each_then_combined() -> None:
    host = MapHost(make_service(leg_similarity_margin=0.1)[0])
    with make_client(host) as client:
        doc = client.post("/v1/documents", json={"model": MODEL, "text": long_document(12),
                                                 "name": "manual"}).json()
        assert doc["anchor"]["mode"] == "sections" and len(doc["sections"]) >= 2
        for section in doc["sections"]:
            assert section["prefix_key"] and len(section["holders"]) == 1
            assert section["cacheable_tokens"] > 0
        out = client.post(f"/v1/documents/{doc['id']}/ask",
                          json={"question": "The harbour and the violin?"}).json()
        meta = out["document"]
        assert meta["mode"] == "sections"
        # The harbour opens the document and the violin ends it: both ends answer.
        indices = sorted(s["index"] for s in meta["sections"])
        assert indices[0] == 0 and indices[-1] == len(doc["sections"]) - 1
        legs_sent, combine = host.sent[:len(indices)], host.sent[len(indices)]
        assert [b.stream for b in legs_sent] == [False] * len(indices) and not combine.stream
        assert combine.messages[0]["content"] == COMBINE_INSTRUCTION
        text = long_document(12)
        for used in meta["sections"]:
            held = doc["sections"][used["index"]]
            assert (used["tokens"], used["chars"]) == (held["tokens"], held["chars"])
        # The named sections' text holds the passages asked about.
        named = " ".join(text[a:b] for a, b in (u["chars"] for u in meta["sections"]))
        assert "harbour" in named and "violin" in named
        assert [leg["cached_tokens"] for leg in meta["legs"]] == [384, 384]
        # Usage: the combine's (300 / 256) plus both legs'.
        assert out["usage"]["prompt_tokens"] == 300 + 2 * 500
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 256 + 2 * 384
        assert client.get(f"/v1/documents/{doc['id']}").json()["cached_tokens"] == 1024

        # Streamed: the legs are not, the combine is, and its usage event sums them.
        host.sent.clear()
        with client.stream("POST", f"/v1/documents/{doc['id']}/ask",
                           json={"question": "The harbour and the violin?",
                                 "stream": True}) as resp:
            events = sse_events(resp.read().decode())
        assert [b.stream for b in host.sent] == [False, False, True]
        assert len(events[0]["document"]["sections"]) == 2
        usage = events[-2]["usage"]
        assert (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (
            1300, 1024)

        # A chat naming the document behaves the same.
        host.sent.clear()
        chat = client.post("/v1/chat/completions", headers={"x-document-id": doc["id"]},
                           json={"model": MODEL, "messages": [
                               {"role": "user", "content": "The harbour and the violin?"}]})
        assert chat.status_code == 200, chat.text
        assert len(host.sent) == 3 and len(chat.json()["document"]["sections"]) == 2


def test_a_question_about_one_section_is_one_request_from_its_anchor() -> None:
    host = MapHost(make_service()[0])
    with make_client(host) as client:
        doc = client.post("/v1/documents", json={"model": MODEL, "text": long_document(12),
                                                 "name": "manual"}).json()
        out = client.post(f"/v1/documents/{doc['id']}/ask",
                          json={"question": "Tell me about the violin keeper."}).json()
        assert len(host.sent) == 1 and "legs" not in out["document"]
        (used,) = out["document"]["sections"]
        assert used["index"] == len(doc["sections"]) - 1  # paragraph 11 is the last
        assert out["usage"]["prompt_tokens"] == 500
