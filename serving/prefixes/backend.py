"""The prefix registry's view of the running service (``PrefixBackend``).

- tokens: the engine's own tokenizer and chat template (``PromptTokenizer``, the one
  the router uses; the same path loads the same cached tokenizer in this process);
- prewarm: a chat completion with ``max_tokens=1`` and no generation prompt, sent
  through the ingress's DeploymentHandle exactly like client traffic, so the
  configured router places it and learns the owner;
- placement / forget: the ``cacheroute`` router instance of this process, through
  ``LocalRouters`` (serving/routing/registry.py). Other policies keep no ownership
  index: no home is reported and nothing is rewarmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionRequest

from router import Placement
from serving.routing.registry import LocalRouters
from serving.config import ServiceConfig
from serving.prefixes.metrics import PrefixMetrics
from serving.prefixes.registry import (
    PrefixError,
    PrefixRegistry,
    Prewarmed,
    RegistrySettings,
)
from serving.prefixes.store import InMemoryPrefixStore, PrefixStore, StoreLimits
from serving.ray_private import ErrorResponse, OpenAIHTTPException
from serving.routing.prompt_tokens import PromptTokenizer

# A prefill of a few thousand tokens on a loaded CPU replica takes seconds; this only
# stops a registration from hanging on a stuck replica.
PREWARM_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class _PrefixPrompt:
    """The attributes of a chat request that ``PromptTokenizer`` reads."""

    messages: Sequence[Mapping[str, Any]]
    cache_salt: str | None
    add_generation_prompt: bool = False


class ServingPrefixBackend:
    def __init__(self, *,
                 send_chat: Callable[[ChatCompletionRequest], AsyncGenerator[Any, None]],
                 tokenizer_path: str, deployment: str, tracks_placement: bool,
                 routers: LocalRouters) -> None:
        self._send_chat = send_chat
        self._routers = routers
        self._tokenizer = PromptTokenizer(tokenizer_path)
        self._deployment = deployment
        self.tracks_placement = tracks_placement

    async def token_ids(self, messages: Sequence[Mapping[str, Any]],
                        salt: str | None) -> tuple[int, ...]:
        ids = await asyncio.to_thread(self._tokenizer.token_ids, _PrefixPrompt(messages, salt))
        return ids or ()

    async def prewarm(self, model: str, messages: Sequence[Mapping[str, Any]],
                      salt: str | None) -> Prewarmed:
        # Under the owner's salt: the prefix's blocks are the owning tenant's alone.
        body = ChatCompletionRequest(model=model, messages=list(messages), max_tokens=1,
                                     temperature=0.0, add_generation_prompt=False,
                                     cache_salt=salt, stream=False)
        try:
            reply = await asyncio.wait_for(self._first_reply(body), PREWARM_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise PrefixError(504, f"Prewarming the prefix took over {PREWARM_TIMEOUT_S:g} s.",
                              code="timeout") from None
        if isinstance(reply, list):  # a batch of chunks
            reply = reply[0]
        if isinstance(reply, ErrorResponse):
            raise OpenAIHTTPException(message=reply.error.message,
                                      status_code=reply.error.code, type=reply.error.type)
        usage = reply.usage
        details = getattr(usage, "prompt_tokens_details", None)
        return Prewarmed(prompt_tokens=usage.prompt_tokens,
                         cached_tokens=getattr(details, "cached_tokens", None) or 0)

    async def _first_reply(self, body: ChatCompletionRequest) -> Any:
        replies = self._send_chat(body)
        try:
            return await replies.__anext__()
        finally:
            await replies.aclose()

    def placement(self, token_ids: Sequence[int], salt: str | None) -> Placement | None:
        return self._routers.prefix_placement(self._deployment, token_ids, cache_salt=salt)

    def forget(self, token_ids: Sequence[int], salt: str | None) -> int:
        return self._routers.forget_prefix(self._deployment, token_ids, cache_salt=salt)


def registry_settings(config: ServiceConfig, models: frozenset[str]) -> RegistrySettings:
    p = config.prefixes
    return RegistrySettings(
        models=models,
        block_size=config.engine.block_size,
        # The prewarm must fit the context with its one generated token.
        max_prefix_tokens=min(p.max_prefix_tokens, config.engine.max_model_len - 1),
        default_ttl_s=p.default_ttl_s,
        max_ttl_s=p.max_ttl_s,
        rewarm_interval_s=p.rewarm_interval_s,
        rewarm_lease_s=PREWARM_TIMEOUT_S,
    )


def ingress_args(config: ServiceConfig, tokenizer_path: str) -> dict[str, Any]:
    """What the ingress needs to build its registry (plain values: Serve pickles them)."""
    return {"config_json": config.model_dump_json(), "tokenizer_path": tokenizer_path}


def open_prefix_store(redis_url: str | None, limits: StoreLimits, *,
                      namespace: str = "cacheroute") -> PrefixStore:
    """Redis (under ``namespace``) when a URL is configured, else the in-process store."""
    if redis_url:
        from serving.prefixes.store_redis import RedisPrefixStore

        return RedisPrefixStore.from_url(redis_url, limits, namespace=namespace)
    return InMemoryPrefixStore(limits)


def redis_namespace(config: ServiceConfig, deployment: str, models: frozenset[str]) -> str:
    """This deployment's Redis namespace (serving/prefixes/store_redis.py)."""
    from serving.prefixes.store_redis import namespace_of

    return namespace_of(config.prefixes.redis_namespace, deployment, models)


def build_registry(args: Mapping[str, Any], *, models: frozenset[str], deployment: str,
                   send_chat: Callable[[ChatCompletionRequest], AsyncGenerator[Any, None]],
                   routers: LocalRouters, metrics: PrefixMetrics) -> PrefixRegistry:
    """The registry of one ingress replica (runs in its process: the Redis URL may come
    from that process's environment)."""
    config = ServiceConfig.model_validate_json(args["config_json"])
    store = open_prefix_store(
        config.prefixes.resolved_redis_url(),
        StoreLimits(max_prefixes=config.prefixes.max_prefixes,
                    max_total_tokens=config.prefixes.max_total_tokens),
        namespace=redis_namespace(config, deployment, models))
    backend = ServingPrefixBackend(send_chat=send_chat, tokenizer_path=args["tokenizer_path"],
                                   deployment=deployment, routers=routers,
                                   tracks_placement=config.routing.policy == "cacheroute")
    return PrefixRegistry(store, backend, registry_settings(config, models), metrics)
