"""The ingress serves every client request under its tenant's cache salt: each body
that reaches an engine or the router (chat, completions, embeddings, score,
tokenize, detokenize) leaves `_get_response` with `cache_salt` = the tenant's salt,
the client's own only narrowing it. Upstream's handle call is replaced by a recorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ray.llm._internal.serve.core.configs.openai_api_models import (
    DetokenizeRequest,
    ScoreRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import EmbeddingRequest
from starlette.requests import Request

from serving.config import ServiceConfig
from serving.ingress.request_models import ChatCompletionRequest, CompletionRequest
from serving.prefixes.backend import ingress_args
from serving.tenants.config import TenantLimits
from serving.tenants.identity import STATE_KEY, Tenant
from tests.tiny_model import build_tiny_model

ACME = Tenant("acme", TenantLimits())
GLOBEX = Tenant("globex", TenantLimits())
CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def request_of(tenant: Tenant) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/x", "headers": [],
                    "query_string": b"", "state": {STATE_KEY: tenant}})


def bodies(client_salt: str | None) -> dict[str, Any]:
    salt = {"cache_salt": client_salt} if client_salt else {}
    embed_types = EmbeddingRequest.__args__  # type: ignore[attr-defined]
    return {
        "chat": ChatCompletionRequest(model="m", messages=CHAT, **salt),
        "completions": CompletionRequest(model="m", prompt="hello", **salt),
        "embeddings": embed_types[0](model="m", input="hello", **salt),
        "score": ScoreRequest(model="m", text_1="a", text_2="b", **salt),
        # No cache_salt field: a client may still send one (extras are allowed).
        "tokenize": TokenizeCompletionRequest(model="m", prompt="hello", **salt),
        "tokenize_chat": TokenizeChatRequest(model="m", messages=CHAT, **salt),
        "detokenize": DetokenizeRequest(model="m", tokens=[1, 2], **salt),
    }


@pytest.mark.parametrize("client_salt", [None, "eu"])
def test_every_client_body_leaves_under_its_tenants_salt(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch, client_salt: str | None) -> None:
    from serving.ingress.ingress import CacheRouteIngress

    sent: list[Any] = []

    async def upstream(self: Any, *, body: Any, call_method: str,
                       raw_request: Any = None) -> AsyncIterator[Any]:
        sent.append(body)
        yield "ok"

    monkeypatch.delenv("CACHEROUTE_REDIS_URL", raising=False)
    monkeypatch.setattr(OpenAiIngress, "_get_response", upstream)
    config = ServiceConfig.model_validate({"engine": {"block_size": 16},
                                           "routing": {"policy": "pow2"}})

    async def main() -> None:
        ingress = CacheRouteIngress({"m": object()}, {"m": None}, app_name="a",
                                    llm_deployment="LLMServer:salt-test", num_replicas=1,
                                    prefixes=ingress_args(config, str(tiny_model)))
        for tenant in (ACME, GLOBEX):
            for name, body in bodies(client_salt).items():
                method = name.removesuffix("_chat")
                out = [r async for r in ingress._get_response(
                    body=body, call_method=method, raw_request=request_of(tenant))]
                assert out == ["ok"] and sent[-1] is body
                assert body.cache_salt == tenant.cache_salt(client_salt), name
        # A client's salt naming another tenant's only narrows its own.
        spoof = ChatCompletionRequest(model="m", messages=CHAT, cache_salt=ACME.salt)
        [_ async for _ in ingress._get_response(body=spoof, call_method="chat",
                                                 raw_request=request_of(GLOBEX))]
        assert spoof.cache_salt.startswith(GLOBEX.salt + "-")
        # The registry's own calls (no raw request) keep the owner's salt they carry.
        internal = ChatCompletionRequest(model="m", messages=CHAT, cache_salt=ACME.salt)
        [_ async for _ in ingress._get_response(body=internal, call_method="chat")]
        assert internal.cache_salt == ACME.salt
        await ingress._prefix_registry.close()
    asyncio.run(main())
