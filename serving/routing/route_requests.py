"""Serve's pending request as the routing core sees it: a ``RouteRequest``, tokenised once.

The router's prefix key is the engine's own blocks, so a request's prompt is
tokenised as vLLM will (serving/routing/prompt_tokens.py). A request Serve asks about
again (it waited for a slot, or Serve retried it after a full replica) reuses its
tokens: they are kept under Serve's request id until the request completes, and the
oldest beyond ``MAX_KEPT`` are dropped (a request that never completes). Long prompts
are tokenised in a worker thread, keeping the router's event loop free. The session
is Serve's session id, else the OpenAI ``user`` field.

Cost: one tokenisation per request (cached segments make a repeated system prompt
cheap, serving/routing/segment_tokens.py), O(1) per lookup.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest

from router import RouteRequest
from serving.routing.prompt_tokens import PromptTokenizer

logger = logging.getLogger("ray.serve")

# Prompts longer than this are tokenised in a worker thread, keeping the event loop
# free; shorter ones cost less than the thread hop.
THREAD_TOKENIZE_MIN_CHARS = 4096
# Tokenised requests kept while they wait to be routed (re-decisions reuse them);
# entries leave when the request completes, this bounds the ones that never do.
MAX_KEPT = 4096


def _prompt_chars(request: Any) -> int:
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str):
        return len(prompt)
    messages = getattr(request, "messages", None) or []
    return sum(len(str(m)) for m in messages)


class RouteRequests:
    def __init__(self, tokenizer_path: str) -> None:
        self.tokenizer = PromptTokenizer(tokenizer_path)
        self._kept: OrderedDict[str, RouteRequest] = OrderedDict()

    async def of(self, pending_request: PendingRequest | None) -> RouteRequest:
        """The request's ``RouteRequest``; one without a key (no body, or a body the
        tokenizer rejects) still routes, as a request with no prefix."""
        if pending_request is None or not pending_request.args:
            return RouteRequest()
        key = pending_request.metadata.internal_request_id
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        try:
            request = await self._tokenize(pending_request)
        except Exception:  # a request the tokenizer rejects still deserves an answer
            logger.exception("cacheroute: could not tokenize; routing without a prefix key")
            return RouteRequest()
        self._kept[key] = request
        if len(self._kept) > MAX_KEPT:
            self._kept.popitem(last=False)
        return request

    def forget(self, request_id: str) -> None:
        """The request completed: its tokens are not needed again."""
        self._kept.pop(request_id, None)

    async def _tokenize(self, pending_request: PendingRequest) -> RouteRequest:
        body = pending_request.args[0]
        if _prompt_chars(body) >= THREAD_TOKENIZE_MIN_CHARS:
            token_ids = await asyncio.to_thread(self.tokenizer.packed_ids, body)
        else:
            token_ids = self.tokenizer.packed_ids(body)
        session = pending_request.metadata.session_id or getattr(body, "user", None) or None
        return RouteRequest(
            token_ids=token_ids,
            cache_salt=getattr(body, "cache_salt", None),
            session_id=session,
        )
