"""Serve's pending request as the routing core sees it: a ``RouteRequest``, tokenised once.

The router's prefix key is the engine's own blocks, so a request's prompt is
tokenised as vLLM will (serving/routing/prompt_tokens.py). A request Serve asks about
again (it waited for a slot, or Serve retried it after a full replica) reuses its
tokens: they are kept under Serve's request id until the request completes, and the
oldest beyond ``MAX_KEPT`` are dropped (a request that never completes). The session
is Serve's session id, else the OpenAI ``user`` field.

A request body is the client's: rendering its chat template and encoding its text
never run on Serve's router event loop, which decides every request of this ingress.
They run in one worker thread, and a request whose tokens are not ready within
``TOKENIZE_BUDGET_S`` is routed without a prefix key (outcome ``no_key``): a miss
costs that request one prefill, a stalled loop would cost every request. The
ingress refuses client templates before routing (serving/ingress/chat_templates.py),
so only the served model's own template renders here; the budget bounds what is left
(a body at the size limit). One worker, so a slow body delays the tokens of the
requests behind it, which then route without keys too, rather than taking a thread
each.

Cost: one tokenisation per request (cached segments make a repeated system prompt
cheap, serving/routing/segment_tokens.py) plus one thread hop, O(1) per lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.serve.request_router import PendingRequest

from router import RouteRequest
from serving.routing.prompt_tokens import PromptTokenizer

logger = logging.getLogger("ray.serve")

# Longest wait for a request's tokens before it is routed without a prefix key: far
# above the encoding of a full context window of text on one core, far below what a
# client would notice as a stall of everyone else's requests.
TOKENIZE_BUDGET_S = 1.0
# At most one warning per this many seconds while requests run out of budget.
_WARN_EVERY_S = 60.0
# Tokenised requests kept while they wait to be routed (re-decisions reuse them);
# entries leave when the request completes, this bounds the ones that never do.
MAX_KEPT = 4096


class RouteRequests:
    def __init__(self, tokenizer_path: str) -> None:
        self.tokenizer = PromptTokenizer(tokenizer_path)
        self._kept: OrderedDict[str, RouteRequest] = OrderedDict()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cacheroute-tokenize")
        self.budget_s = TOKENIZE_BUDGET_S
        self.over_budget = 0
        self._warned_at = -_WARN_EVERY_S

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
        except asyncio.TimeoutError:
            self._on_over_budget()
            return RouteRequest()
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
        loop = asyncio.get_running_loop()
        token_ids = await asyncio.wait_for(
            loop.run_in_executor(self._worker, self.tokenizer.packed_ids, body),
            timeout=self.budget_s)
        session = pending_request.metadata.session_id or getattr(body, "user", None) or None
        return RouteRequest(
            token_ids=token_ids,
            cache_salt=getattr(body, "cache_salt", None),
            session_id=session,
        )

    def _on_over_budget(self) -> None:
        self.over_budget += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            logger.warning("cacheroute: a request's tokens took over %.1f s; routed without "
                           "a prefix key (%d so far)", self.budget_s, self.over_budget)
