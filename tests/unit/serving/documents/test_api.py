"""The /v1/documents routes on the ingress's real FastAPI app (auth, error shaping),
driven with a TestClient; behind them the document service with fake tokenizer,
embedder and engine (tests/unit/serving/documents/document_fakes.py), and a chat that answers with a
usage report. Also: the ingress's wiring and the settings from the service config."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse, StreamingResponse

from serving.config import ServiceConfig
from serving.documents.api import (
    DOCUMENT_ENDPOINTS,
    DOCUMENT_HEADER,
    DocumentRoutes,
    document_settings,
)
from serving.documents.service import DocumentService
from serving.ingress.request_models import ChatCompletionRequest
from serving.tenants.identity import tenant_salt
from tests.unit.serving.documents.document_fakes import long_document, make_service
from tests.unit.serving.prefixes.prefix_fakes import MODEL

API_KEY = "k-0123"  # tenant `default`
GLOBEX_KEY = "k-globex"


class Host(DocumentRoutes):
    """Stands in for the ingress class, which inherits the same routes."""

    def __init__(self, service: DocumentService) -> None:
        self._documents = service
        self.sent: list[Any] = []

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        # The ingress's `chat` dispatch (serving/ingress/ingress.py), without Ray.
        document = request.headers.get(DOCUMENT_HEADER)
        if document is not None:
            return await self.chat_about_document(document, body, request)
        return await self.send_chat(body, request)

    async def send_chat(self, body: Any, request: Any) -> JSONResponse | StreamingResponse:
        self.sent.append(body)
        if body.stream:
            return StreamingResponse(_events(), media_type="text/event-stream")
        return JSONResponse({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Yes."}}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 1,
                      "prompt_tokens_details": {"cached_tokens": 256}}})


STREAM_EVENTS = [
    {"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "Yes."}, "finish_reason": "stop"}]},
    {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {
        "prompt_tokens": 300, "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 256}}},
]


async def _events():
    # The second and third events arrive in one chunk, as they can from the engine.
    yield f"data: {json.dumps(STREAM_EVENTS[0])}\n\n"
    yield "".join(f"data: {json.dumps(e)}\n\n" for e in STREAM_EVENTS[1:]) + "data: [DONE]\n\n"


def sse_events(text: str) -> list[Any]:
    return [line[len("data: "):] if line == "data: [DONE]" else json.loads(line[len("data: "):])
            for line in text.splitlines() if line.startswith("data: ")]


@pytest.fixture
def metrics() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def host(metrics: CollectorRegistry) -> Host:
    return Host(make_service(metrics=metrics)[0])


@pytest.fixture
def client(host: Host) -> Iterator[TestClient]:
    from serving.ingress.ingress import build_fastapi_app

    app = build_fastapi_app(ServiceConfig.model_validate(
        {"server": {"api_keys": [API_KEY], "api_keys_env": None,
                    "tenants": {"globex": {"api_keys": [GLOBEX_KEY]}}}}))
    for name, route in DOCUMENT_ENDPOINTS.items():
        route(app)(getattr(host, name))
    app.post("/v1/chat/completions")(host.chat)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def test_upload_ask_list_delete(client: TestClient, host: Host,
                                metrics: CollectorRegistry) -> None:
    resp = client.post("/v1/documents", json={"model": MODEL, "text": long_document(3),
                                              "name": "memo"})
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert (doc["object"], doc["name"], doc["anchor"]["mode"]) == ("document", "memo", "whole")
    assert len(doc["anchor"]["holders"]) == 1
    assert client.post("/v1/documents", json={"model": MODEL, "text": long_document(3),
                                              "name": "memo"}).status_code == 200

    answer = client.post(f"/v1/documents/{doc['id']}/ask", json={"question": "Why?"})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["choices"][0]["message"]["content"] == "Yes."
    assert out["document"]["id"] == doc["id"] and out["document"]["mode"] == "whole"
    sent = host.sent[-1]
    assert (sent.model, sent.max_tokens, sent.stream) == (MODEL, 16, False)

    labels = {"order": "document"}
    assert metrics.get_sample_value("cacheroute_document_cached_tokens_total", labels) == 256
    assert metrics.get_sample_value("cacheroute_document_prompt_tokens_total", labels) == 300
    assert metrics.get_sample_value("cacheroute_document_assembly_seconds_count", labels) == 1
    assert metrics.get_sample_value("cacheroute_document_ask_seconds_count", labels) == 1
    assert metrics.get_sample_value("cacheroute_documents") == 1

    listed = client.get("/v1/documents").json()["data"]
    assert [(d["id"], d["asks"], d["cached_tokens"]) for d in listed] == [(doc["id"], 1, 256)]
    assert client.get(f"/v1/documents/{doc['id']}").json()["prompt_tokens"] == 300

    deleted = client.delete(f"/v1/documents/{doc['id']}").json()
    assert deleted["holders_before"] == doc["anchor"]["holders"]
    assert deleted["holders_after"] == []
    assert client.get("/v1/documents").json()["data"] == []
    assert metrics.get_sample_value("cacheroute_document_evictions_total",
                                    {"reason": "deleted"}) == 1


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"model": MODEL, "text": 5}, 400, "invalid_request"),
    ({"model": MODEL}, 400, "invalid_request"),
    ({"model": MODEL, "text": "a", "extra": 1}, 400, "invalid_request"),
    ({"model": MODEL, "text": "a", "name": ""}, 400, "invalid_request"),
    ({"model": MODEL, "text": ""}, 400, "invalid_request"),
    ({"model": "nope", "text": "a"}, 404, "model_not_found"),
    ({"model": MODEL, "text": "x" * 200_001}, 413, "request_too_large"),
])
def test_bad_uploads_get_an_openai_shaped_4xx(client: TestClient, payload: dict, status: int,
                                              code: str) -> None:
    resp = client.post("/v1/documents", json=payload)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)


def test_a_streamed_answer_carries_the_document_and_counts_its_usage(
        client: TestClient, host: Host, metrics: CollectorRegistry) -> None:
    doc_id = client.post("/v1/documents", json={"model": MODEL,
                                                "text": long_document(3)}).json()["id"]
    with client.stream("POST", f"/v1/documents/{doc_id}/ask",
                       json={"question": "Why?", "stream": True}) as resp:
        assert resp.status_code == 200
        events = sse_events(resp.read().decode())
    sent = host.sent[-1]
    assert sent.stream and sent.stream_options.include_usage
    assert events[-1] == "[DONE]"
    first, *rest = events[:-1]
    assert first["document"]["id"] == doc_id and first["document"]["mode"] == "whole"
    assert {k: v for k, v in first.items() if k != "document"} == STREAM_EVENTS[0]
    assert rest == STREAM_EVENTS[1:]  # everything after the first event passes as it came
    labels = {"order": "document"}
    assert metrics.get_sample_value("cacheroute_document_cached_tokens_total", labels) == 256
    assert metrics.get_sample_value("cacheroute_document_prompt_tokens_total", labels) == 300
    assert metrics.get_sample_value("cacheroute_document_ask_seconds_count", labels) == 1
    assert client.get(f"/v1/documents/{doc_id}").json()["asks"] == 1


def test_bad_questions_and_unknown_ids(client: TestClient) -> None:
    doc_id = client.post("/v1/documents", json={"model": MODEL,
                                                "text": long_document(3)}).json()["id"]
    for body, status in [({"question": ""}, 400), ({"question": "Why?", "max_tokens": 0}, 400),
                         ({"question": "Why?", "temperature": "hot"}, 400),
                         ({"question": "Why?", "stream": [1]}, 400)]:
        resp = client.post(f"/v1/documents/{doc_id}/ask", content=json.dumps(body))
        assert resp.status_code == status, resp.text
    for path in ["/v1/documents/doc-x", "/v1/documents/" + "doc-" + "1" * 32]:
        assert client.get(path).json()["error"]["code"] == "not_found"
        assert client.delete(path).status_code == 404
    assert TestClient(client.app).get("/v1/documents").status_code == 401


def test_another_tenants_document_answers_like_an_unknown_one(client: TestClient,
                                                              host: Host) -> None:
    doc = client.post("/v1/documents", json={"model": MODEL, "text": long_document(3),
                                             "name": "memo"}).json()
    assert tenant_salt("default") not in json.dumps(doc)  # the salt never leaves
    globex = {"Authorization": f"Bearer {GLOBEX_KEY}"}
    unknown = "doc-" + "1" * 32

    def probes(doc_id: str) -> list[Any]:
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Why?"}]}
        return [client.get(f"/v1/documents/{doc_id}", headers=globex),
                client.post(f"/v1/documents/{doc_id}/ask", json={"question": "Why?"},
                            headers=globex),
                client.post("/v1/chat/completions", json=chat,
                            headers={**globex, DOCUMENT_HEADER: doc_id}),
                client.delete(f"/v1/documents/{doc_id}", headers=globex)]

    for theirs, nobodys in zip(probes(doc["id"]), probes(unknown)):
        assert theirs.status_code == nobodys.status_code == 404
        assert theirs.json() == json.loads(nobodys.text.replace(unknown, doc["id"]))
    assert host.sent == []  # nothing reached an engine
    assert client.get("/v1/documents", headers=globex).json()["data"] == []
    assert client.get(f"/v1/documents/{doc['id']}").status_code == 200  # still the owner's


def test_serve_binds_the_document_routes_to_the_ingress() -> None:
    from ray.serve.llm.ingress import make_fastapi_ingress

    from serving.ingress.ingress import CacheRouteIngress, _endpoint_map, build_fastapi_app

    for name in DOCUMENT_ENDPOINTS:
        assert name in _endpoint_map()
        assert inspect.iscoroutinefunction(getattr(CacheRouteIngress, name))
    app = build_fastapi_app(ServiceConfig())
    make_fastapi_ingress(CacheRouteIngress, endpoint_map=_endpoint_map(), app=app)
    routes = {(r.path, m): r for r in app.routes if "documents" in getattr(r, "path", "")
              for m in r.methods}
    params = {k: sorted(p.name for p in r.dependant.query_params + r.dependant.path_params
                        + r.dependant.body_params) for k, r in routes.items()}
    assert params == {("/v1/documents", "POST"): ["body"], ("/v1/documents", "GET"): [],
                      ("/v1/documents/{id}", "GET"): ["id"],
                      ("/v1/documents/{id}", "DELETE"): ["id"],
                      ("/v1/documents/{id}/ask", "POST"): ["body", "id"]}


def test_settings_follow_the_service_config() -> None:
    config = ServiceConfig.model_validate({
        "engine": {"max_model_len": 800},
        "documents": {"lead_tokens": 1000, "chunk_tokens": 100, "chunk_overlap_tokens": 10,
                      "max_documents": 3}})
    s = document_settings(config, frozenset({"m"}))
    assert s.lead_tokens == 200  # capped at a quarter of the window
    assert (s.chunk_tokens, s.chunk_overlap_tokens, s.max_model_len) == (100, 10, 800)
    assert s.eviction.max_documents == 3
    with pytest.raises(ValueError):
        ServiceConfig.model_validate({"documents": {"chunk_tokens": 50,
                                                    "chunk_overlap_tokens": 50}})


def chat(client: TestClient, doc_id: str | None, messages: list[dict], **fields: Any) -> Any:
    headers = {DOCUMENT_HEADER: doc_id} if doc_id is not None else {}
    return client.post("/v1/chat/completions", headers=headers,
                       json={"model": MODEL, "messages": messages, **fields})


def test_a_chat_request_naming_a_document_is_a_question_about_it(
        client: TestClient, host: Host, metrics: CollectorRegistry) -> None:
    doc_id = client.post("/v1/documents", json={"model": MODEL,
                                                "text": long_document(3)}).json()["id"]
    asked = client.post(f"/v1/documents/{doc_id}/ask", json={"question": "Why?"}).json()
    system = host.sent[-1].messages[0]
    turns = [{"role": "user", "content": "Why?"},
             {"role": "assistant", "content": "Yes."},
             {"role": "user", "content": [{"type": "text", "text": "And then?"}]}]
    resp = chat(client, doc_id, turns, temperature=0.5)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["document"] == {**asked["document"], "assembly_ms": out["document"]["assembly_ms"]}
    sent = host.sent[-1]
    # The document's system message, the earlier turns as they were asked, the question.
    assert sent.messages == [system, {"role": "user", "content": "Question: Why?"},
                             {"role": "assistant", "content": "Yes."},
                             {"role": "user", "content": "Question: And then?"}]
    assert (sent.temperature, sent.max_tokens, sent.stream) == (0.5, 16, False)
    assert chat(client, doc_id, turns[:1], max_tokens=5).status_code == 200
    assert host.sent[-1].max_tokens == 5  # the client's max_tokens stays
    assert client.get(f"/v1/documents/{doc_id}").json()["asks"] == 3
    assert metrics.get_sample_value("cacheroute_document_cached_tokens_total",
                                    {"order": "document"}) == 3 * 256

    with client.stream("POST", "/v1/chat/completions", headers={DOCUMENT_HEADER: doc_id},
                       json={"model": MODEL, "messages": turns[:1], "stream": True,
                             "stream_options": {"include_usage": True}}) as streamed:
        events = sse_events(streamed.read().decode())
    assert events[0]["document"]["id"] == doc_id and events[-1] == "[DONE]"
    assert client.get(f"/v1/documents/{doc_id}").json()["asks"] == 4

    # Without the header a chat request is an ordinary one.
    assert chat(client, None, turns[:1]).status_code == 200
    assert host.sent[-1].messages == [{"role": "user", "content": "Why?"}]


@pytest.mark.parametrize(("messages", "fields", "status", "param"), [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}], {},
     400, "messages"),
    ([{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Yes."}], {},
     400, "messages"),
    ([{"role": "user", "content": [{"type": "image_url",
                                    "image_url": {"url": "http://x/y.png"}}]}], {},
     400, "messages"),
    ([{"role": "tool", "content": "42", "tool_call_id": "t"}], {}, 400, "messages"),
    ([{"role": "user", "content": "Why?"}], {"model": "other"}, 400, "model"),
])
def test_a_bad_chat_about_a_document_gets_an_openai_shaped_4xx(
        client: TestClient, host: Host, messages: list, fields: dict, status: int,
        param: str) -> None:
    doc_id = client.post("/v1/documents", json={"model": MODEL,
                                                "text": long_document(3)}).json()["id"]
    sent = len(host.sent)
    resp = chat(client, doc_id, messages, **fields)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "invalid_request", param)
    assert len(host.sent) == sent  # nothing reached the engines
    unknown = chat(client, "doc-" + "2" * 32, [{"role": "user", "content": "Why?"}])
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
