"""The document service of one ingress: upload, plan a question's context, forget.

- ``upload``: check the limits, chunk the text (``chunking``), embed every chunk
  (``embedding``, in a worker thread), and register the document's cached *anchors*
  (``anchors``): the whole text when it fits the window with
  ``answer_reserve_tokens`` to spare, else one per *section* (``sections``), each
  fitting the window with that reserve. The registry prewarms each through the
  router (so the replica its block hashes go to computes its KV once), rewarms it
  when a replica loses it, and counts every question that starts with it. Then
  admit the document under the eviction bounds (``eviction``).
- ``plan``: embed the question. A sectioned document: rank the sections and render
  one leg per answering section, its anchor then the question (``legs``). A whole
  document: its anchor then the question, falling back to the lead plus excerpts in
  document order (``assembly``) when the question and ``max_tokens`` leave no room
  for all of it. The rendered prompt's exact token count is checked. The ingress
  sends it as an ordinary chat request: its prompt starts with an anchor, so the
  cache-aware router sends it to that anchor's owner (bounded loads still apply) and
  the engine serves the anchor's blocks from cache.
- ``observe``: the engine's ``cached_tokens`` for the answer (chunk cache hit rate).
- ``delete`` / eviction: drop the document, delete every anchor's registered prefix
  and make the router forget its blocks, whether or not the registry still held it.

Ownership: a document belongs to the tenant that uploaded it. Its id derives from its
content and that tenant's cache salt, so the same upload by two tenants is two
documents; every read, question and delete names the caller's tenant, and another
tenant's id is answered exactly like an unknown one. Its anchors (the whole text's or
each section's) are registered as prefixes of that tenant, prewarmed and asked under
that tenant's salt. Each tenant keeps its documents (their kept tokens, sections'
overlaps counted) within its own `tenant_limits` quota, and the service-wide bounds
evict from the tenant holding the most (``eviction``).

State is per ingress process (a dict, never in Redis); the anchors' prefix records
live in the prefix registry's store (Redis when configured). Costs: an upload tokenises its
text about three times and embeds every chunk once; a question embeds one sentence,
ranks in O(chunks x 384), and tokenises each rendered prompt once or a few times.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.documents import assembly
from serving.documents.anchors import DocumentAnchors, DocumentTokenizer
from serving.documents.assembly import Mode, Order, Selection
from serving.documents.chunking import Chunk, chunk_document
from serving.documents.embedding import Embedder, EmbedderUnavailable
from serving.documents.document import Document, document_id
from serving.documents.eviction import EvictionPolicy, Quota, Reason, victims
from serving.documents.index import VectorIndex
from serving.documents.legs import plan_legs
from serving.documents.metrics import DocumentMetrics
from serving.documents.sections import Leg, SectionError
from serving.prefixes.registry import PrefixError, PrefixRegistry
from serving.tenants.identity import Tenant

logger = logging.getLogger("ray.serve")

# Tokens the chat template adds after the last message for the answer
# (`<|im_start|>assistant\n` is 3 for SmolLM2); counted generously because the exact
# check below measures the messages without the generation prompt.
_GENERATION_PROMPT_TOKENS = 16

# Template tokens around one earlier turn (`<|im_start|>user\nQuestion: ` ... `<|im_end|>\n`).
_TURN_TOKENS = 8

_ID_RE = re.compile(r"doc-[0-9a-f]{32}")


class DocumentError(PrefixError):
    """A request the document service refuses; an OpenAI-shaped error body."""


@dataclass(frozen=True, kw_only=True)
class DocumentSettings:
    models: frozenset[str]
    max_model_len: int
    max_document_bytes: int
    chunk_tokens: int
    chunk_overlap_tokens: int
    lead_tokens: int
    top_k: int
    answer_reserve_tokens: int
    max_section_legs: int
    leg_similarity_margin: float
    default_max_tokens: int
    max_question_chars: int
    eviction: EvictionPolicy


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A question's context, ready to send as a chat request."""

    document: Document
    messages: list[dict[str, str]]
    selection: Selection
    max_tokens: int
    assembly_s: float
    # A sectioned document's: one per section answering, best first; ``messages``
    # is the first's. Two or more are answered separately and combined (legs.py).
    legs: tuple[Leg, ...] = ()


class DocumentService:
    def __init__(self, *, settings: DocumentSettings, registry: PrefixRegistry,
                 tokenizer: DocumentTokenizer, embedder: Embedder, metrics: DocumentMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._registry = registry
        self._tokenizer = tokenizer
        self._embedder = embedder
        self._metrics = metrics
        self._clock = clock
        self._documents: dict[str, Document] = {}
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[Any]] = set()
        self._anchors = DocumentAnchors(registry=registry, tokenizer=tokenizer,
                                        ttl_s=settings.eviction.idle_ttl_s, clock=clock)

    @property
    def settings(self) -> DocumentSettings:
        return self._settings

    @property
    def anchors(self) -> DocumentAnchors:
        """Where the router places each anchor of a document."""
        return self._anchors

    # --- upload -----------------------------------------------------------------

    async def upload(self, *, model: str, text: str, name: str | None,
                     owner: Tenant) -> tuple[Document, bool]:
        """Add a document of tenant ``owner`` (or find its identical one); returns it
        and whether it is new."""
        s = self._settings
        if model not in s.models:
            raise DocumentError(404, f'Could not find model "{model}".', code="model_not_found",
                                param="model")
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > s.max_document_bytes:
            raise DocumentError(413, f"The document is {size} bytes; the limit is "
                                f"{s.max_document_bytes} bytes.", code="request_too_large",
                                param="text")
        if not text.strip():
            raise DocumentError(400, "text must hold some non-blank text.",
                                code="invalid_request", param="text")
        name = (name or "").strip() or "untitled"
        doc_id = document_id(model, name, text, owner.cache_salt())
        await self.sweep()
        existing = self._documents.get(doc_id)
        if existing is not None:
            existing.last_used_at = self._clock()
            return existing, False

        started = time.perf_counter()
        chunks, tokens = await asyncio.to_thread(self._chunk, text)
        limit = self._quota(owner).max_total_tokens
        if tokens > limit:
            raise DocumentError(413, f"The document is {tokens} tokens; the limit is "
                                f"{limit} tokens.", code="request_too_large", param="text")
        vectors = await self._embed([text[c.start:c.end] for c in chunks])
        overhead = await asyncio.to_thread(self._tokenizer.chat_tokens, [
            assembly.system_message(name, ""),
            {"role": "user", "content": f"{assembly.EXCERPTS_HEADING}\n\n\n\nQuestion: "}],
            owner.cache_salt())
        whole = tokens + overhead + s.answer_reserve_tokens <= s.max_model_len
        # The lead is a whole document's fallback only (a sectioned one has none).
        lead_count = assembly.lead_chunks(chunks, s.lead_tokens) if whole else 0
        lead_tokens = (await asyncio.to_thread(self._tokenizer.count, [assembly.anchor_text(
            text, chunks, lead_count, Mode.EXCERPTS)]))[0] if whole else 0
        now = self._clock()
        doc = Document(id=doc_id, owner=owner, name=name, model=model, text=text,
                       chunks=tuple(chunks), index=VectorIndex(vectors), tokens=tokens,
                       lead_count=lead_count, lead_tokens=lead_tokens,
                       anchor_mode=Mode.WHOLE if whole else Mode.SECTIONS,
                       overhead_tokens=overhead, anchor_tokens=0, prefix_key=None,
                       cacheable_tokens=0, anchor_token_ids=(), sections=(), fresh_tokens=(),
                       created_at=now, last_used_at=now, registered_at=now)
        if whole:
            await self._anchors.register_whole(doc)
        else:
            try:
                await self._anchors.register_sections(
                    doc, window_tokens=s.max_model_len - s.answer_reserve_tokens)
            except SectionError as err:
                raise DocumentError(400, "The document cannot be cut into sections that leave "
                                    f"room for a question in the context window: {err}.",
                                    code="invalid_request", param="text") from err
        async with self._lock:
            if doc_id in self._documents:  # the same upload raced this one
                return self._documents[doc_id], False
            self._documents[doc_id] = doc
            gone = victims((d.usage() for d in self._documents.values()), now, s.eviction,
                           keep=doc_id, quotas=self._quotas())
            dropped = [(self._documents.pop(i), reason) for i, reason in gone]
        for victim, reason in dropped:
            await self._drop(victim, reason)
        self._metrics.documents.set(len(self._documents))
        self._metrics.upload_seconds.observe(time.perf_counter() - started)
        logger.info("cacheroute: document %s (%s) added: %d tokens, %d chunks, anchor %s "
                    "(%d tokens, %d sections)", doc_id, name, tokens, len(chunks),
                    doc.anchor_mode.value, doc.anchor_tokens, len(doc.sections))
        return doc, True

    def _quota(self, owner: Tenant) -> Quota:
        """``owner``'s own bounds: its `tenant_limits`, within the service-wide ones."""
        return Quota.within(self._settings.eviction, max_documents=owner.limits.max_documents,
                            max_total_tokens=owner.limits.max_document_tokens)

    def _quotas(self) -> dict[str, Quota]:
        return {d.owner.name: self._quota(d.owner) for d in self._documents.values()}

    async def _embed(self, texts: list[str]) -> Any:
        try:
            return await asyncio.to_thread(self._embedder.embed, texts)
        except EmbedderUnavailable as err:
            raise DocumentError(503, f"Document analysis is not available: {err}",
                                code="service_unavailable") from err

    def _chunk(self, text: str) -> tuple[list[Chunk], int]:
        s = self._settings
        chunks = chunk_document(text, chunk_tokens=s.chunk_tokens,
                                overlap_tokens=s.chunk_overlap_tokens,
                                count=self._tokenizer.count)
        return chunks, self._tokenizer.count([text.strip()])[0]

    # --- questions --------------------------------------------------------------

    async def plan(self, doc_id: str, *, owner: str, question: str, max_tokens: int | None,
                   order: Order = Order.DOCUMENT,
                   history: Sequence[Mapping[str, str]] = ()) -> Plan:
        """A question's context. ``history``: earlier turns of a conversation about
        the document (``{"role": "user" | "assistant", "content"}``), kept between
        the system message and the question; they take their tokens from the budget
        for excerpts."""
        s = self._settings
        doc = self.get(doc_id, owner)
        if not question.strip():
            raise DocumentError(400, "question must hold some non-blank text.",
                                code="invalid_request", param="question")
        if len(question) > s.max_question_chars:
            raise DocumentError(400, f"question is {len(question)} characters; the limit is "
                                f"{s.max_question_chars}.", code="invalid_request",
                                param="question")
        answer = s.default_max_tokens if max_tokens is None else max_tokens
        started = time.perf_counter()
        vector = await self._embed([question])
        if order is Order.DOCUMENT and doc.sections:
            legs = await plan_legs(
                doc, doc.index.similarities(vector), question=question, answer_tokens=answer,
                history=history, max_legs=s.max_section_legs, margin=s.leg_similarity_margin,
                window_tokens=s.max_model_len,
                prompt_tokens=lambda messages: self._prompt_tokens(messages, doc.salt),
                no_room=lambda: _no_room(answer, s.max_model_len, history))
            elapsed = time.perf_counter() - started
            self._metrics.assembly_seconds.labels(order=order.value).observe(elapsed)
            return Plan(document=doc, messages=legs[0].messages, max_tokens=answer,
                        selection=Selection(mode=Mode.SECTIONS, order=order, excerpts=(),
                                            tokens=0), assembly_s=elapsed, legs=tuple(legs))
        ranked = doc.index.ranked(vector[0])
        counts = await asyncio.to_thread(self._tokenizer.count,
                                         [question, *(m["content"] for m in history)])
        # Each earlier turn also costs its template tokens: an estimate; the exact
        # check below has the last word.
        history_tokens = sum(counts[1:]) + _TURN_TOKENS * len(history)
        budget = (s.max_model_len - answer - counts[0] - history_tokens - doc.overhead_tokens
                  - _GENERATION_PROMPT_TOKENS)
        if (order is Order.DOCUMENT and budget < doc.lead_tokens) or budget < 1:
            raise _no_room(answer, s.max_model_len, history)
        whole_ok = order is Order.DOCUMENT and doc.anchor_mode is Mode.WHOLE
        selection = self._select(doc, ranked, budget, order, whole_ok=whole_ok)
        messages = self._render(doc, selection, question, history)
        # Exact check: chunk counts are summed estimates (boundaries merge tokens).
        while await self._prompt_tokens(messages, doc.salt) + answer > s.max_model_len:
            if selection.mode is Mode.WHOLE:
                selection = self._select(doc, ranked, budget, order, whole_ok=False)
            elif selection.excerpts:
                selection = assembly.without_last_ranked(selection, ranked, doc.chunks)
            else:
                raise _no_room(answer, s.max_model_len, history)
            messages = self._render(doc, selection, question, history)
        elapsed = time.perf_counter() - started
        self._metrics.assembly_seconds.labels(order=order.value).observe(elapsed)
        return Plan(document=doc, messages=messages, selection=selection, max_tokens=answer,
                    assembly_s=elapsed)

    def _select(self, doc: Document, ranked: Sequence[int], budget: int, order: Order, *,
                whole_ok: bool) -> Selection:
        # A document anchored by its lead is never sent whole: its cached prefix is the lead.
        return assembly.select(chunks=doc.chunks, ranked=ranked,
                               document_tokens=doc.tokens if whole_ok else math.inf,
                               lead_count=doc.lead_count, lead_tokens=doc.lead_tokens,
                               budget_tokens=budget, top_k=self._settings.top_k, order=order)

    async def _prompt_tokens(self, messages: list[dict[str, str]], salt: str) -> int:
        tokens = await asyncio.to_thread(self._tokenizer.chat_tokens, messages, salt)
        return tokens + _GENERATION_PROMPT_TOKENS

    @staticmethod
    def _render(doc: Document, selection: Selection, question: str,
                history: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
        return assembly.messages(name=doc.name, text=doc.text, chunks=doc.chunks,
                                 lead_count=doc.lead_count, selection=selection,
                                 question=question, history=history)

    def observe(self, plan: Plan, *, prompt_tokens: int | None, cached_tokens: int | None,
                elapsed_s: float) -> None:
        """Count one answered question (usage from the engine's response)."""
        doc = plan.document
        doc.asks += 1
        doc.last_used_at = self._clock()
        used = {i for leg in plan.legs for i in range(  # legs may share a chunk: once
            doc.sections[leg.section].section.first_chunk, leg.last_chunk + 1)}
        for index in (*plan.selection.excerpts, *used):
            doc.chunk_hits[index] = doc.chunk_hits.get(index, 0) + 1
        order = plan.selection.order.value
        self._metrics.ask_seconds.labels(order=order).observe(elapsed_s)
        if prompt_tokens is not None and cached_tokens is not None:
            doc.prompt_tokens += prompt_tokens
            doc.cached_tokens += cached_tokens
            self._metrics.prompt_tokens.labels(order=order).inc(prompt_tokens)
            self._metrics.cached_tokens.labels(order=order).inc(cached_tokens)
        ttl = self._anchors.ttl_s
        if doc.cacheable_tokens and doc.last_used_at - doc.registered_at > ttl / 2:
            # Still in use: renew the anchor's registration before it expires.
            doc.registered_at = doc.last_used_at
            self._background(self._renew(doc))

    async def _renew(self, doc: Document) -> None:
        try:
            await self._anchors.renew(doc)
        except PrefixError as err:
            logger.warning("cacheroute: document %s: anchor not renewed: %s", doc.id,
                           err.message)

    # --- listing, deleting, eviction --------------------------------------------

    def get(self, doc_id: str, owner: str) -> Document:
        """Tenant ``owner``'s document; another tenant's is unknown (404), in the same
        words, so an id cannot be probed."""
        doc = self._documents.get(doc_id) if _ID_RE.fullmatch(doc_id) else None
        if doc is None or doc.owner.name != owner:
            raise _unknown(doc_id)
        return doc

    def documents(self, owner: str) -> list[Document]:
        """Tenant ``owner``'s documents, most recently used first."""
        return sorted((d for d in self._documents.values() if d.owner.name == owner),
                      key=lambda d: (-d.last_used_at, d.id))

    def holders(self, doc: Document) -> list[str]:
        """Replicas the router believes hold every full block of one of its anchors."""
        return self._anchors.holders(doc)

    async def delete(self, doc_id: str, owner: str) -> Document:
        self.get(doc_id, owner)  # 404 for an unknown id, or another tenant's
        async with self._lock:
            doc = self._documents.pop(doc_id, None)
        if doc is None:
            raise _unknown(doc_id)
        await self._drop(doc, Reason.DELETED)
        self._metrics.documents.set(len(self._documents))
        return doc

    async def sweep(self) -> int:
        """Drop stale documents and enforce the bounds; returns how many went."""
        async with self._lock:
            gone = victims((d.usage() for d in self._documents.values()), self._clock(),
                           self._settings.eviction, quotas=self._quotas())
            dropped = [(self._documents.pop(i), reason) for i, reason in gone]
        for doc, reason in dropped:
            await self._drop(doc, reason)
        if dropped:
            self._metrics.documents.set(len(self._documents))
        return len(dropped)

    async def _drop(self, doc: Document, reason: Reason) -> None:
        """Forget the document's anchors (anchors.py) -- but those another document of
        its owner still held shares (same name and opening section). Another tenant's
        never share one: its anchors are served under its own salt."""
        await self._anchors.forget(doc, keep={a for d in self._documents.values()
                                              if d.owner.name == doc.owner.name
                                              for a in d.anchors()})
        self._metrics.evictions.labels(reason=reason.value).inc()
        logger.info("cacheroute: document %s dropped (%s)", doc.id, reason.value)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _unknown(doc_id: str) -> DocumentError:
    return DocumentError(404, f"No document has id '{doc_id[:80]}'.", code="not_found",
                         param="id")


def _no_room(answer: int, window: int, history: Sequence[Any]) -> DocumentError:
    turns = ", the earlier turns" if history else ""
    return DocumentError(400, f"The question{turns} and max_tokens ({answer}) leave no room "
                         f"for the document in the {window}-token context window.",
                         code="invalid_request", param="max_tokens")
