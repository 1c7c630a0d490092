"""HTTP face of the prefix registry (``prefix_registry.py``), mounted on the ingress.

    POST   /v1/prefixes        {"model", "messages", "ttl_s"?, "tenant"?}
                               201 {"object": "prefix", "key", ...} (200 when the same
                               content was already registered: TTL refreshed)
    GET    /v1/prefixes        {"object": "list", "data": [prefix, ...]}, most recently used first
    DELETE /v1/prefixes/{key}  {"object": "prefix.deleted", "key", "deleted": true}

The key is derived from the content (``prefix_store.prefix_key``); a body naming one
is refused like any unknown field. ``tenant`` is vLLM's ``cache_salt``: the prefix is
prewarmed under it, and a chat request reaches it only with the same ``cache_salt``
(vLLM keeps salted blocks apart, so tenants cannot probe each other's prompts).

The routes are methods of ``PrefixRoutes``, which the ingress class inherits, because
Serve binds an ingress's routes to its methods (``make_fastapi_ingress``); the host
sets ``self._prefix_registry``. Errors are ``PrefixError``s, shaped by the ingress's
exception handler like every other error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.prefixes.registry import PrefixRegistry, PrefixUse
from serving.prefixes.store import PrefixRecord


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Body):
    type: Literal["text"] = "text"
    text: str


class PrefixMessage(_Body):
    # The static parts of a conversation: instructions and few-shot turns.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, min_length=1, max_length=256)


class PrefixCreateRequest(_Body):
    model: str = Field(min_length=1, max_length=256)
    messages: list[PrefixMessage] = Field(min_length=1, max_length=256)
    ttl_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Seconds until the prefix expires; the configured default when omitted."""
    tenant: str | None = Field(None, min_length=1, max_length=256)
    """Sent as vLLM's `cache_salt` (see the module docstring)."""


def prefix_json(record: PrefixRecord) -> dict[str, Any]:
    return {
        "object": "prefix",
        "key": record.key,
        "model": record.model,
        "tenant": record.tenant,
        "prefix_tokens": record.prefix_tokens,
        "cacheable_tokens": record.cacheable_tokens,
        "hits": record.hits,
        "misses": record.misses,
        "home_replica": record.home,
        "ttl_s": record.ttl_s,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "last_used_at": record.last_used_at,
    }


class PrefixRoutes:
    """The registry's routes, as methods of the ingress class."""

    _prefix_registry: PrefixRegistry

    async def create_prefix(self, body: PrefixCreateRequest) -> JSONResponse:
        self._prefix_registry.ensure_sweeping()
        record, created = await self._prefix_registry.register(
            model=body.model, messages=[m.model_dump(exclude_none=True) for m in body.messages],
            ttl_s=body.ttl_s, tenant=body.tenant)
        return JSONResponse(prefix_json(record), status_code=201 if created else 200)

    async def list_prefixes(self) -> JSONResponse:
        self._prefix_registry.ensure_sweeping()
        records = await self._prefix_registry.records()
        return JSONResponse({"object": "list", "data": [prefix_json(r) for r in records]})

    async def delete_prefix(self, key: str) -> JSONResponse:
        await self._prefix_registry.delete(key)
        return JSONResponse({"object": "prefix.deleted", "key": key, "deleted": True})


# Method name -> route, in the shape `make_fastapi_ingress` takes.
PREFIX_ENDPOINTS: dict[str, Callable[[FastAPI], Callable]] = {
    "create_prefix": lambda app: app.post(
        "/v1/prefixes", status_code=201,
        responses={200: {"description": "Already registered: its TTL was refreshed."}}),
    "list_prefixes": lambda app: app.get("/v1/prefixes"),
    "delete_prefix": lambda app: app.delete("/v1/prefixes/{key}"),
}


def cached_tokens(payload: Any) -> int | None:
    """`usage.prompt_tokens_details.cached_tokens` of a response or chunk, if any."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) else None


def sse_json(line: str) -> Any:
    """The JSON object of one server-sent event line `data: {...}`; None for any other
    line (`data: [DONE]`, blank, comment) or one that does not parse."""
    if not line.startswith("data: {"):
        return None
    try:
        return json.loads(line[len("data: "):])
    except ValueError:
        return None


def observe_response(registry: PrefixRegistry, use: PrefixUse, response: Response) -> Response:
    """Count the response's hit or miss for ``use``; the response itself is unchanged.

    A stream is watched as it passes: only chunks mentioning `cached_tokens` (the
    usage chunk, with `stream_options.include_usage`) are parsed, and the count is
    made when the stream ends, however it ends.
    """
    if isinstance(response, StreamingResponse):
        response.body_iterator = _watch_stream(response.body_iterator, registry, use)
        return response
    if response.status_code == 200:
        try:
            payload = json.loads(bytes(response.body))
        except (ValueError, TypeError):
            payload = None
        registry.observe(use, cached_tokens(payload))
    return response


async def _watch_stream(chunks: AsyncIterable[Any], registry: PrefixRegistry,
                        use: PrefixUse) -> AsyncIterator[Any]:
    seen: int | None = None
    try:
        async for chunk in chunks:
            text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else str(chunk)
            if "cached_tokens" in text:
                for line in text.splitlines():
                    found = cached_tokens(sse_json(line))
                    seen = found if found is not None else seen
            yield chunk
    finally:
        registry.observe(use, seen)
