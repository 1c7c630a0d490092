"""HTTP face of the prefix registry (``prefix_registry.py``), mounted on the ingress.

    POST   /v1/prefixes        {"model", "messages", "ttl_s"?, "cache_salt"?}
                               201 {"object": "prefix", "key", ...} (200 when the same
                               content was already registered: TTL refreshed)
    GET    /v1/prefixes        {"object": "list", "data": [prefix, ...]}, most recently used first
    DELETE /v1/prefixes/{key}  {"object": "prefix.deleted", "key", "deleted": true}

Every route acts for the request's tenant (serving/tenants/identity.py): a prefix
belongs to the tenant that registered it, is listed and deleted by that tenant only
(another tenant's key is a 404 in the words of an unknown one), and is prewarmed
under that tenant's server-derived cache salt, the salt every chat request of the
tenant is served under. The key is derived from the content and that salt
(``store.prefix_key``); a body naming one is refused like any unknown field.
``cache_salt`` (also accepted as ``tenant``, its former name) narrows the tenant's
salt as a chat request's own ``cache_salt`` does: a chat request reaches the prefix
only with the same value. It is the only part of the salt a response echoes; the
server-derived salt never leaves the service.

The routes are methods of ``PrefixRoutes``, which the ingress class inherits, because
Serve binds an ingress's routes to its methods (``make_fastapi_ingress``); the host
sets ``self._prefix_registry``. Errors are ``PrefixError``s, shaped by the ingress's
exception handler like every other error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.prefixes.registry import PrefixRegistry, PrefixUse
from serving.prefixes.store import PrefixRecord
from serving.tenants.identity import tenant_of


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
    cache_salt: str | None = Field(None, min_length=1, max_length=256,
                                   validation_alias=AliasChoices("cache_salt", "tenant"))
    """Narrows the tenant's cache salt, as a chat request's `cache_salt` does (see the
    module docstring); `tenant` is its former name."""


def prefix_json(record: PrefixRecord) -> dict[str, Any]:
    return {
        "object": "prefix",
        "key": record.key,
        "model": record.model,
        # The client's own narrowing value only: the tenant's salt is never echoed.
        "cache_salt": record.cache_salt,
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

    async def create_prefix(self, body: PrefixCreateRequest, request: Request) -> JSONResponse:
        self._prefix_registry.ensure_sweeping()
        record, created = await self._prefix_registry.register(
            model=body.model, messages=[m.model_dump(exclude_none=True) for m in body.messages],
            ttl_s=body.ttl_s, owner=tenant_of(request), cache_salt=body.cache_salt)
        return JSONResponse(prefix_json(record), status_code=201 if created else 200)

    async def list_prefixes(self, request: Request) -> JSONResponse:
        self._prefix_registry.ensure_sweeping()
        records = await self._prefix_registry.records(tenant_of(request).name)
        return JSONResponse({"object": "list", "data": [prefix_json(r) for r in records]})

    async def delete_prefix(self, key: str, request: Request) -> JSONResponse:
        await self._prefix_registry.delete(key, tenant_of(request).name)
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
