"""A document's cached anchors in the prefix registry and the router.

An anchor is a system message registered as a prefix: the whole text's for a document
that fits the window, else one per section (``sections.py``). Registering prewarms it
through the router (one prefill on the replica its block hashes go to), and the
registry rewarms it when that replica loses it and counts the questions that start
with it. ``forget`` deletes each anchor's prefix and makes the router forget its
blocks, whether or not the registry still held it (it expires on its own). Sections
are registered one after the other: each prewarm is a prefill of up to a window.

Every anchor is the document owner's: registered as a prefix of that tenant, its
token ids, prewarm, placement and forgetting all under that tenant's cache salt
(serving/tenants/identity.py), so two tenants' copies of one text never share blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from serving.documents import assembly, sections
from serving.documents.sections import SectionAnchor, SectionedDocument, SectionError
from serving.prefixes.registry import PrefixError, PrefixRegistry
from serving.prefixes.store import PrefixKey
from serving.tenants.identity import Tenant

logger = logging.getLogger("ray.serve")

# Cuts tried before giving up: each cut is smaller by the worst section's excess, and
# estimates are off by boundary tokens only, so a second cut normally fits.
_CUT_ATTEMPTS = 4

Anchor = tuple[PrefixKey | None, tuple[int, ...]]


class DocumentTokenizer(Protocol):
    """The served model's tokenizer, as the engine uses it."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each plain text (no special tokens)."""

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], salt: str) -> int:
        """Prompt tokens of chat messages, rendered without a generation prompt; any
        cache of the tokenizer is kept per ``salt`` (the owner's)."""


class Document(SectionedDocument, Protocol):
    """What anchoring needs of a document (service.py's ``Document``)."""

    id: str
    owner: Tenant
    model: str
    anchor_token_ids: tuple[int, ...]
    anchor_tokens: int
    prefix_key: PrefixKey | None
    cacheable_tokens: int
    registered_at: float

    @property
    def salt(self) -> str: ...

    def anchors(self) -> list[Anchor]: ...


class DocumentAnchors:
    def __init__(self, *, registry: PrefixRegistry, tokenizer: DocumentTokenizer,
                 ttl_s: float, clock: Callable[[], float]) -> None:
        self._registry = registry
        self._tokenizer = tokenizer
        # The registry refuses to outlive its own limit; renewed on use (service.py).
        self.ttl_s = min(ttl_s, registry.settings.max_ttl_s)
        self._clock = clock

    async def register_whole(self, doc: Document) -> None:
        """The whole text as the document's one anchor."""
        system = assembly.system_message(doc.name, doc.text.strip())
        doc.anchor_token_ids, doc.prefix_key, doc.cacheable_tokens = await self._register(
            doc, system)
        doc.anchor_tokens = len(doc.anchor_token_ids)
        doc.registered_at = self._clock()

    async def register_sections(self, doc: Document, *, window_tokens: int) -> None:
        """Cut the document into sections whose anchors fit ``window_tokens`` (cut by
        estimate, measured exactly, cut again smaller below any that does not fit), then
        register each. Raises ``SectionError`` when no cut fits."""
        count = self._tokenizer.count
        fresh = await asyncio.to_thread(sections.fresh_tokens, doc.text, doc.chunks, count)
        # The label's widest part number (999) bounds any section's.
        empty = assembly.system_message(sections.label(doc.name, 998, 999), "")
        # A block less than the window: room for the padding to a block boundary.
        block = self._registry.settings.block_size
        budget = window_tokens - (block - 1) - await asyncio.to_thread(
            self._tokenizer.chat_tokens, [empty], doc.salt)
        for _ in range(_CUT_ATTEMPTS):
            cut = sections.cut(doc.chunks, fresh, budget_tokens=budget)
            systems = [sections.anchor_message(doc.name, doc.text, doc.chunks, c, len(cut))
                       for c in cut]
            sizes = await asyncio.to_thread(self._sizes, systems, doc.salt)
            over = max(size + block - 1 - window_tokens for size in sizes)
            if over <= 0:
                break
            budget -= over
        else:
            raise SectionError(f"no cut into sections fits {window_tokens} tokens")
        spans = sections.token_spans(cut, doc.chunks, fresh)
        pads = [await asyncio.to_thread(self._block_pad, doc, c, len(cut), size, block,
                                        window_tokens)
                for c, size in zip(cut, sizes)]
        doc.fresh_tokens = tuple(fresh)
        doc.sections = tuple(SectionAnchor(section=c, count=len(cut), token_start=a, token_end=b,
                                           pad=pad)
                             for c, (a, b), pad in zip(cut, spans, pads))
        await self.renew_sections(doc)

    def _block_pad(self, doc: Document, section: sections.Section, count: int, size: int,
                   block: int, window_tokens: int) -> str:
        """Whitespace that ends the section's system message (``size`` tokens) on a block
        boundary, measured; "" when none is needed or no unit lands on one (the anchor
        then works as before, its last partial block prefilled by each question)."""
        need = -size % block
        if need == 0:
            return ""
        for unit in sections.PAD_UNITS:
            pad = unit * need
            tokens = self._tokenizer.chat_tokens([sections.anchor_message(
                doc.name, doc.text, doc.chunks, section, count, pad=pad)], doc.salt)
            if tokens % block == 0 and tokens <= window_tokens:
                return pad
        return ""

    def _sizes(self, systems: list[dict[str, str]], salt: str) -> list[int]:
        return [self._tokenizer.chat_tokens([m], salt) for m in systems]

    async def renew_sections(self, doc: Document) -> None:
        for anchor in doc.sections:
            anchor.token_ids, anchor.prefix_key, anchor.cacheable_tokens = await self._register(
                doc, sections.anchor_message(doc.name, doc.text, doc.chunks,
                                                   anchor.section, anchor.count, pad=anchor.pad))
        doc.anchor_tokens = sum(len(a.token_ids) for a in doc.sections)
        doc.cacheable_tokens = sum(a.cacheable_tokens for a in doc.sections)
        doc.registered_at = self._clock()

    async def renew(self, doc: Document) -> None:
        if doc.sections:
            await self.renew_sections(doc)
        else:
            await self.register_whole(doc)

    async def _register(self, doc: Document, system: dict[str, str]
                        ) -> tuple[tuple[int, ...], PrefixKey | None, int]:
        """(token ids, prefix key, cacheable tokens) of one anchor, registered as a
        prefix of the document's owner under its salt."""
        token_ids = await self._registry.backend.token_ids([system], doc.salt)
        try:
            record, _ = await self._registry.register(model=doc.model, messages=[system],
                                                      ttl_s=self.ttl_s, owner=doc.owner)
        except PrefixError as err:
            if err.status == 400 and err.param == "messages":  # shorter than one block
                return token_ids, None, 0
            raise
        return token_ids, record.key, record.cacheable_tokens

    def holders(self, doc: Document) -> list[str]:
        """Replicas the router believes hold every full block of an anchor (of any
        section's, for a sectioned document)."""
        out: set[str] = set()
        for _, token_ids in doc.anchors():
            out.update(self.placement(token_ids, doc.salt)[1])
        return sorted(out)

    def placement(self, token_ids: tuple[int, ...], salt: str
                  ) -> tuple[str | None, list[str]]:
        """(home replica, holders) of one anchor served under ``salt``, as the router
        places it."""
        backend = self._registry.backend
        found = (backend.placement(token_ids, salt)
                 if token_ids and backend.tracks_placement else None)
        return (found.home, sorted(found.holders)) if found is not None else (None, [])

    async def forget(self, doc: Document, *, keep: Collection[Anchor] = ()) -> None:
        """Delete each anchor's prefix and the router's ownership of its blocks, but
        those in ``keep`` (anchors a document still held shares: same name and text)."""
        for key, token_ids in doc.anchors():
            if (key, token_ids) in keep:
                continue
            if key is not None:
                try:
                    await self._registry.delete(key, doc.owner.name)
                except PrefixError as err:
                    if err.status != 404:  # gone already (expired or evicted) is fine
                        logger.warning("cacheroute: document %s: prefix not deleted: %s",
                                       doc.id, err.message)
            # The registry forgets only prefixes it still held: forget here too.
            if token_ids:
                self._registry.backend.forget(token_ids, doc.salt)

    @property
    def backend(self) -> Any:
        return self._registry.backend
