"""HTTP face of the document service (``service.py``), mounted on the ingress.

    POST   /v1/documents           {"model", "text", "name"?}
                                   201 {"object": "document", "id", ...} (200 when the
                                   identical document is already held)
    GET    /v1/documents           {"object": "list", "data": [document, ...]}, most
                                   recently used first
    GET    /v1/documents/{id}      the document, with where the router places its anchor
                                   (or each section's: "sections")
    DELETE /v1/documents/{id}      {"object": "document.deleted", "id", "deleted": true,
                                    "holders_before", "holders_after"}
    POST   /v1/documents/{id}/ask  {"question", "max_tokens"?, "temperature"?,
                                    "context_order"?, "stream"?} -> a chat completion,
                                   plus a "document" object saying which sections
                                   (indices, chunk and token spans) or chunks it used;
                                   with "stream": true, chat completion chunks
                                   (server-sent events), the first carrying "document"
                                   and the last the usage

A chat completion request names a document with the header ``x-document-id``
(``POST /v1/chat/completions``, so the ``openai`` client works through
``extra_headers``, streaming included): its last message, a user message, is the
question; earlier user and assistant turns are kept after the document's system
message (``assembly.rendered_history``); its other fields (``stream``,
``temperature``, ...) pass through, and ``max_tokens`` defaults to
``documents.default_max_tokens``. The answer carries the same ``document`` object.
System, developer and tool messages are refused (the document supplies the system
message), as is a ``model`` other than the document's.

A question answered from several sections (``legs.py``) is one request per section
and a combine request; its usage is their sum, and ``document.legs`` gives each
section's. Streamed, only the combine streams.

Every route is the caller's tenant's: a document is listed, read, asked and deleted
by the tenant that uploaded it only (another tenant's id is a 404 like an unknown
one), and every request it sends (each leg and the combine included) is served under
that tenant's cache salt, the one its anchors were prewarmed under.

``holders`` are the replicas the router's ownership index believes hold every full
block of the document's anchor (or of any of its sections'); a DELETE reports them
before and after forgetting, so a client (and the tests) can see ownership dropped.
A streamed answer always ends with the usage chunk (as with
``stream_options.include_usage``): the service counts its ``cached_tokens`` when
the stream ends, however it ends. ``context_order: "similarity"`` is the naive
baseline for benchmarks: excerpts best first with no anchor, so neither the
engine's prefix cache nor the router's document placement helps.

Routes are methods of ``DocumentRoutes``, which the ingress class inherits (Serve
binds an ingress's routes to its methods); the host sets ``self._documents`` and
provides ``send_chat`` (a chat request through the router, the document header not
consulted). Errors are ``DocumentError``s (a ``PrefixError``), shaped by the
ingress's handler like every other error.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from ray.serve.llm.openai_api_models import ChatCompletionRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.config import ServiceConfig
from serving.documents.assembly import Order
from serving.documents.embedding import MiniLMEmbedder
from serving.documents.eviction import EvictionPolicy
from serving.documents.legs import LegAnswer, add_usage, map_reduce
from serving.ray_private import own_serve_request
from serving.documents.metrics import DocumentMetrics
from serving.documents.sections import SectionAnchor
from serving.documents.service import (
    Document,
    DocumentError,
    DocumentService,
    DocumentSettings,
    Plan,
)
from serving.prefixes.api import cached_tokens, sse_json
from serving.prefixes.registry import PrefixRegistry
from serving.routing.prompt_tokens import PromptTokenizer
from serving.tenants.identity import tenant_of


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentCreateRequest(_Body):
    model: str = Field(min_length=1, max_length=256)
    text: str
    """The document; its size limit is `documents.max_document_bytes` (413 above it)."""
    name: str | None = Field(None, min_length=1, max_length=256)


class AskRequest(_Body):
    question: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    context_order: Literal["document", "similarity"] = "document"
    stream: bool = False


def document_json(service: DocumentService, doc: Document) -> dict[str, Any]:
    home, holders = service.anchors.placement(doc.anchor_token_ids, doc.salt)
    return {
        "object": "document",
        "id": doc.id,
        "name": doc.name,
        "model": doc.model,
        "bytes": len(doc.text.encode("utf-8", errors="surrogatepass")),
        "tokens": doc.tokens,
        "chunks": len(doc.chunks),
        "anchor": {
            "mode": doc.anchor_mode.value,
            "lead_chunks": doc.lead_count,
            "tokens": doc.anchor_tokens,
            "cacheable_tokens": doc.cacheable_tokens,
            "prefix_key": doc.prefix_key,
            "home_replica": home,
            "holders": holders,
        },
        "sections": [section_json(service, doc, a) for a in doc.sections],
        "asks": doc.asks,
        "prompt_tokens": doc.prompt_tokens,
        "cached_tokens": doc.cached_tokens,
        "created_at": doc.created_at,
        "last_used_at": doc.last_used_at,
    }


def section_json(service: DocumentService, doc: Document,
                 anchor: SectionAnchor) -> dict[str, Any]:
    """One section: its span and its anchor's placement."""
    home, holders = service.anchors.placement(anchor.token_ids, doc.salt)
    return {**section_span(doc, anchor), "anchor_tokens": len(anchor.token_ids),
            "cacheable_tokens": anchor.cacheable_tokens, "prefix_key": anchor.prefix_key,
            "home_replica": home, "holders": holders}


def section_span(doc: Document, anchor: SectionAnchor,
                 last_chunk: int | None = None) -> dict[str, Any]:
    """A section's place in its document: its index, first and last chunk (the last
    one used, when a leg was trimmed), character span in the uploaded text, and token
    span (approximate at the boundaries)."""
    section = anchor.section
    last = section.last_chunk if last_chunk is None else last_chunk
    return {"index": section.index, "chunks": [section.first_chunk, last],
            "chars": [doc.chunks[section.first_chunk].start, doc.chunks[last].end],
            "tokens": [anchor.token_start, anchor.token_end]}


# The header by which a chat completion request names a document.
DOCUMENT_HEADER = "x-document-id"


class DocumentRoutes:
    """The document routes, as methods of the ingress class."""

    _documents: DocumentService
    send_chat: Callable[..., Any]  # a chat request through the router, documents aside

    async def create_document(self, body: DocumentCreateRequest,
                              request: Request) -> JSONResponse:
        doc, created = await self._documents.upload(model=body.model, text=body.text,
                                                     name=body.name, owner=tenant_of(request))
        return JSONResponse(document_json(self._documents, doc),
                            status_code=201 if created else 200)

    async def list_documents(self, request: Request) -> JSONResponse:
        await self._documents.sweep()
        owner = tenant_of(request).name
        return JSONResponse({"object": "list", "data": [
            document_json(self._documents, d) for d in self._documents.documents(owner)]})

    async def get_document(self, id: str, request: Request) -> JSONResponse:
        doc = self._documents.get(id, tenant_of(request).name)
        return JSONResponse(document_json(self._documents, doc))

    async def delete_document(self, id: str, request: Request) -> JSONResponse:
        owner = tenant_of(request).name
        before = self._documents.holders(self._documents.get(id, owner))
        doc = await self._documents.delete(id, owner)
        return JSONResponse({"object": "document.deleted", "id": id, "deleted": True,
                             "holders_before": before,
                             "holders_after": self._documents.holders(doc)})

    async def ask_document(self, id: str, body: AskRequest, request: Request) -> Response:
        started = time.perf_counter()
        plan = await self._documents.plan(id, owner=tenant_of(request).name,
                                          question=body.question, max_tokens=body.max_tokens,
                                          order=Order(body.context_order))
        # No cache_salt: the ingress serves it under the tenant's, the owner's
        # (the plan found the document the caller's own), where the anchor is warm.
        chat = ChatCompletionRequest(
            model=plan.document.model, messages=plan.messages, max_tokens=plan.max_tokens,
            stream=body.stream, temperature=body.temperature,
            stream_options={"include_usage": True} if body.stream else None)
        return await self._send(plan, chat, request, body.question, started)

    async def chat_about_document(self, doc_id: str, body: Any, request: Request) -> Response:
        """A chat completion request naming a document (``x-document-id``)."""
        started = time.perf_counter()
        owner = tenant_of(request).name
        doc = self._documents.get(doc_id, owner)
        if body.model != doc.model:
            raise DocumentError(400, f"Document '{doc_id}' belongs to model '{doc.model}', "
                                f"not '{str(body.model)[:80]}'.", code="invalid_request",
                                param="model")
        history, question = conversation(body.messages)
        asked = body.max_completion_tokens or body.max_tokens
        plan = await self._documents.plan(doc_id, owner=owner, question=question,
                                          max_tokens=asked, history=history)
        # The client's own cache_salt is dropped: the question is served under the
        # owner's salt alone, the one its anchor was prewarmed under.
        update: dict[str, Any] = {"messages": plan.messages, "cache_salt": None}
        if asked is None:
            update["max_tokens"] = plan.max_tokens
        return await self._send(plan, body.model_copy(update=update), request, question,
                                started)

    async def _send(self, plan: Plan, chat: Any, request: Request, question: str,
                    started: float) -> Response:
        """One request, or with several legs their map-reduce (legs.py)."""
        if len(plan.legs) < 2:
            return self._answered(plan, _answer_meta(plan), await self.send_chat(chat, request),
                                  started)

        async def send(messages: list[dict[str, str]], as_asked: bool) -> Response:
            update: dict[str, Any] = {"messages": messages}
            if not as_asked:
                # A leg, sent beside the others: a request id of its own, which Serve's
                # router needs to tell them apart (serving/ray_private.py).
                own_serve_request()
                update.update(stream=False, stream_options=None)
            return await self.send_chat(chat.model_copy(update=update), request)

        response, answers = await map_reduce(send, plan.document, plan.legs, question)
        meta = _answer_meta(plan)
        meta["legs"] = [a.json() for a in answers]
        return self._answered(plan, meta, response, started, answers)

    def _answered(self, plan: Plan, meta: dict[str, Any], response: Response,
                  started: float, legs: Sequence[LegAnswer] = ()) -> Response:
        """The engine's answer with ``meta`` as its ``document``; its usage counted
        (with the legs' of a map-reduce added)."""
        if isinstance(response, StreamingResponse):
            response.body_iterator = _document_stream(
                response.body_iterator, meta, legs,
                lambda usage: self._documents.observe(
                    plan, prompt_tokens=usage.get("prompt_tokens"),
                    cached_tokens=usage.get("cached_tokens"),
                    elapsed_s=time.perf_counter() - started))
            return response
        if response.status_code != 200 or not hasattr(response, "body"):
            return response
        try:
            payload = json.loads(bytes(response.body))
        except (TypeError, ValueError):
            return response
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if legs and isinstance(usage, dict):
            add_usage(usage, legs)
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        self._documents.observe(plan, prompt_tokens=prompt if isinstance(prompt, int) else None,
                                cached_tokens=cached_tokens(payload),
                                elapsed_s=time.perf_counter() - started)
        payload["document"] = meta
        return JSONResponse(payload)


def conversation(messages: Sequence[Any]) -> tuple[list[dict[str, str]], str]:
    """(earlier turns, question) of a chat naming a document: user and assistant
    messages with text content, the last one a user message."""
    turns: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        role = _field(message, "role")
        if role not in ("user", "assistant"):
            raise DocumentError(400, f"messages[{i}] has role '{str(role)[:40]}': a chat "
                                "about a document takes user and assistant messages only "
                                "(the document is its system message).",
                                code="invalid_request", param="messages")
        if _field(message, "tool_calls"):
            raise DocumentError(400, f"messages[{i}]: tool calls are not supported in a chat "
                                "about a document.", code="invalid_request", param="messages")
        turns.append({"role": role, "content": _text(_field(message, "content"), i)})
    if not turns or turns[-1]["role"] != "user":
        raise DocumentError(400, "A chat about a document must end with a user message (the "
                            "question).", code="invalid_request", param="messages")
    return turns[:-1], turns[-1]["content"]


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def _text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if _field(part, "type") != "text" or not isinstance(_field(part, "text"), str):
                break
            parts.append(_field(part, "text"))
        else:
            return "\n".join(parts)
    raise DocumentError(400, f"messages[{i}]: a chat about a document takes text content only.",
                        code="invalid_request", param="messages")


def _answer_meta(plan: Plan) -> dict[str, Any]:
    """The ``document`` object of an answer: which context the question got."""
    return {
        "id": plan.document.id,
        "mode": plan.selection.mode.value,
        "context_order": plan.selection.order.value,
        "lead_chunks": plan.document.lead_count if plan.selection.order is Order.DOCUMENT
        else 0,
        "chunks": list(plan.selection.excerpts),
        "sections": [section_span(plan.document, plan.document.sections[leg.section],
                                  leg.last_chunk) for leg in plan.legs],
        "anchor_cacheable_tokens": plan.document.cacheable_tokens,
        "assembly_ms": round(plan.assembly_s * 1000, 3),
    }


async def _document_stream(chunks: AsyncIterable[Any], meta: dict[str, Any],
                           legs: Sequence[LegAnswer],
                           done: Callable[[dict[str, int | None]], None]) -> AsyncIterator[Any]:
    """Pass an answer's server-sent events through, adding ``meta`` as ``document`` to
    the first data event and reading the usage event (the ``legs``' usage added to
    it); ``done`` gets the usage (None values when the stream ended without one)
    however the stream ends.

    Only the first event is re-serialised; the rest pass as they came (a chunk may
    hold several events, so lines are inspected, never assumed one per chunk)."""
    usage: dict[str, int | None] = {"prompt_tokens": None, "cached_tokens": None}
    tagged = False
    try:
        async for chunk in chunks:
            is_bytes = isinstance(chunk, bytes)
            text = chunk.decode(errors="replace") if is_bytes else str(chunk)
            if not tagged or '"usage"' in text:
                lines = text.split("\n")
                for i, line in enumerate(lines):
                    event = sse_json(line)
                    if not isinstance(event, dict):
                        continue
                    found = event.get("usage")
                    if isinstance(found, dict) and legs:
                        add_usage(found, legs)
                        lines[i] = "data: " + json.dumps(event, separators=(",", ":"))
                        text = "\n".join(lines)
                        chunk = text.encode() if is_bytes else text
                    if isinstance(found, dict):
                        prompt = found.get("prompt_tokens")
                        usage["prompt_tokens"] = prompt if isinstance(prompt, int) else None
                        usage["cached_tokens"] = cached_tokens(event)
                    if not tagged and "choices" in event:
                        event["document"] = meta
                        lines[i] = "data: " + json.dumps(event, separators=(",", ":"))
                        tagged = True
                        text = "\n".join(lines)
                        chunk = text.encode() if is_bytes else text
            yield chunk
    finally:
        done(usage)


# Method name -> route, in the shape `make_fastapi_ingress` takes.
DOCUMENT_ENDPOINTS: dict[str, Callable[[FastAPI], Callable]] = {
    "create_document": lambda app: app.post("/v1/documents", status_code=201),
    "list_documents": lambda app: app.get("/v1/documents"),
    "get_document": lambda app: app.get("/v1/documents/{id}"),
    "delete_document": lambda app: app.delete("/v1/documents/{id}"),
    "ask_document": lambda app: app.post("/v1/documents/{id}/ask"),
}


@dataclass(frozen=True)
class _Chat:
    """The attributes of a chat request that ``PromptTokenizer`` reads."""

    messages: Sequence[Mapping[str, Any]]
    add_generation_prompt: bool = False
    cache_salt: str | None = None


class ServingTokenizer:
    """The served model's tokenizer (the router's; the same cached instance)."""

    def __init__(self, path: str) -> None:
        self._prompt = PromptTokenizer(path)

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self._prompt.tokenizer(list(texts), add_special_tokens=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], salt: str) -> int:
        return len(self._prompt.token_ids(_Chat(messages, cache_salt=salt)) or ())


def document_settings(config: ServiceConfig, models: frozenset[str]) -> DocumentSettings:
    d = config.documents
    max_model_len = config.engine.max_model_len
    return DocumentSettings(
        models=models,
        max_model_len=max_model_len,
        max_document_bytes=d.max_document_bytes,
        chunk_tokens=d.chunk_tokens,
        chunk_overlap_tokens=d.chunk_overlap_tokens,
        # The lead must leave most of a small window to excerpts and the answer.
        lead_tokens=min(d.lead_tokens, max_model_len // 4),
        top_k=d.top_k,
        answer_reserve_tokens=d.answer_reserve_tokens,
        max_section_legs=d.max_section_legs,
        leg_similarity_margin=d.leg_similarity_margin,
        default_max_tokens=d.default_max_tokens,
        max_question_chars=d.max_question_chars,
        eviction=EvictionPolicy(max_documents=d.max_documents,
                                max_total_tokens=d.max_total_tokens,
                                half_life_s=d.recency_half_life_s, idle_ttl_s=d.idle_ttl_s),
    )


def build_documents(args: Mapping[str, Any], *, models: frozenset[str],
                    registry: PrefixRegistry, metrics: DocumentMetrics) -> DocumentService:
    """The document service of one ingress replica (``args``: ``ingress_args``)."""
    config = ServiceConfig.model_validate_json(args["config_json"])
    return DocumentService(settings=document_settings(config, models), registry=registry,
                           tokenizer=ServingTokenizer(args["tokenizer_path"]),
                           embedder=MiniLMEmbedder(), metrics=metrics)
