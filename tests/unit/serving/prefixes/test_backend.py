"""ServingPrefixBackend on the real Ray Serve router (fake replicas, tiny real tokenizer):
a prewarm is routed and learned like client traffic, and the registry's view of the
router -- placement, forget -- reads that same instance."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ErrorResponse,
    OpenAIHTTPException,
)
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.test_utils import FakeRunningReplica

from serving.prefixes import backend as prefix_backend

from serving.routing import cacheroute as ray_router

from serving.routing.registry import local_routers
from serving.config import ServiceConfig
from serving.prefixes.backend import ServingPrefixBackend
from serving.prefixes.registry import PrefixError
from serving.routing.prompt_tokens import PromptTokenizer
from tests.tiny_model import build_tiny_model

DEPLOYMENT = "LLMServer:prefix-test"
SYSTEM = {"role": "system", "content": "You are the assistant of Acme Corp. " * 30}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def make_router(model: Path) -> ray_router.CacheRouteRequestRouter:
    config = ServiceConfig.model_validate({"routing": {"policy": "cacheroute"},
                                           "engine": {"block_size": 16}})
    router = ray_router.CacheRouteRequestRouter(
        deployment_id=DeploymentID(name=DEPLOYMENT), handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True)
    router.initialize_state(config_json=config.model_dump_json(), tokenizer_path=str(model))
    router.update_replicas([FakeRunningReplica(f"replica-{i}") for i in range(3)])
    return router


def reply(prompt_tokens: int) -> Any:
    return SimpleNamespace(usage=SimpleNamespace(
        prompt_tokens=prompt_tokens, prompt_tokens_details=SimpleNamespace(cached_tokens=0)))


def test_prewarm_is_routed_learned_and_forgotten(tiny_model: Path) -> None:
    async def main() -> None:
        router = make_router(tiny_model)
        chosen: list[str] = []
        sent: list[ChatCompletionRequest] = []

        async def send_chat(body: ChatCompletionRequest) -> AsyncIterator[Any]:
            # What the handle does with it: the router picks a replica (and learns).
            sent.append(body)
            pending = PendingRequest(args=[body], kwargs={}, metadata=RequestMetadata(
                request_id="r", internal_request_id="i"))
            tiers = await router.choose_replicas(list(router.curr_replicas.values()), pending)
            chosen.append(tiers[0][0].replica_id.unique_id)
            yield reply(router.last_decision.total_blocks * 16)

        backend = ServingPrefixBackend(send_chat=send_chat, tokenizer_path=str(tiny_model),
                                       deployment=DEPLOYMENT, tracks_placement=True,
                                       routers=local_routers())
        ids = await backend.token_ids([SYSTEM], "acme")
        # The router's own tokenisation of the prewarm request: the same prompt.
        assert ids == PromptTokenizer(str(tiny_model)).token_ids(ChatCompletionRequest(
            model="m", messages=[SYSTEM], add_generation_prompt=False))
        assert backend.placement(ids, "acme").holders == frozenset()

        warmed = await backend.prewarm("m", [SYSTEM], "acme")
        body = sent[0]
        assert (body.max_tokens, body.add_generation_prompt, body.cache_salt, body.stream) == (
            1, False, "acme", False)
        assert warmed.prompt_tokens == len(ids) // 16 * 16
        placement = backend.placement(ids, "acme")
        assert placement.holders == {chosen[0]} and placement.home == chosen[0]
        # The salt is part of the blocks' identity: unsalted, nobody holds it.
        assert backend.placement(ids, None).holders == frozenset()

        assert backend.forget(ids, "acme") == len(ids) // 16
        assert backend.placement(ids, "acme").holders == frozenset()
        assert local_routers().prefix_placement("LLMServer:other", ids) is None
        assert local_routers().forget_prefix("LLMServer:other", ids) == 0
    asyncio.run(main())


def test_prewarm_errors_reach_the_client(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(body: ChatCompletionRequest) -> AsyncIterator[Any]:
        yield ErrorResponse(error={"message": "too long", "type": "BadRequestError",
                                   "code": 400})

    async def stuck(body: ChatCompletionRequest) -> AsyncIterator[Any]:
        await asyncio.sleep(10)
        yield reply(0)

    async def main() -> None:
        backend = ServingPrefixBackend(send_chat=refused, tokenizer_path=str(tiny_model),
                                       deployment=DEPLOYMENT, tracks_placement=True,
                                       routers=local_routers())
        with pytest.raises(OpenAIHTTPException) as info:
            await backend.prewarm("m", [SYSTEM], None)
        assert (info.value.status_code, info.value.message) == (400, "too long")
        monkeypatch.setattr(prefix_backend, "PREWARM_TIMEOUT_S", 0.05)
        backend = ServingPrefixBackend(send_chat=stuck, tokenizer_path=str(tiny_model),
                                       deployment=DEPLOYMENT, tracks_placement=True,
                                       routers=local_routers())
        with pytest.raises(PrefixError) as timeout:
            await backend.prewarm("m", [SYSTEM], None)
        assert (timeout.value.status, timeout.value.code) == (504, "timeout")
    asyncio.run(main())


def test_the_ingress_registers_and_counts_through_its_own_handle(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CacheRouteIngress built as Serve builds it, its handle replaced by a fake engine
    that reports every prompt block but the last one as cached."""
    monkeypatch.delenv("CACHEROUTE_REDIS_URL", raising=False)  # the in-process store
    from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionResponse
    from starlette.requests import Request

    from serving.ingress.ingress import CacheRouteIngress
    from serving.prefixes.api import PrefixCreateRequest
    from serving.prefixes.backend import ingress_args
    from serving.observability.metrics import REGISTRY
    from serving.tenants.identity import STATE_KEY as TENANT_STATE_KEY, Tenant
    from serving.tenants.config import TenantLimits

    tenant = Tenant("acme", TenantLimits())

    config = ServiceConfig.model_validate({"engine": {"block_size": 16},
                                           "routing": {"policy": "pow2"}})
    tokenizer = PromptTokenizer(str(tiny_model))
    sent: list[ChatCompletionRequest] = []

    async def engine(*, body: ChatCompletionRequest, call_method: str,
                     raw_request: Any = None) -> AsyncIterator[Any]:
        sent.append(body)
        n = len(tokenizer.token_ids(body) or ())
        yield ChatCompletionResponse(
            model=body.model, choices=[{"index": 0, "finish_reason": "length",
                                        "message": {"role": "assistant", "content": "x"}}],
            usage={"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1,
                   "prompt_tokens_details": {"cached_tokens": (n - 1) // 16 * 16}})

    async def main() -> None:
        ingress = CacheRouteIngress({"m": object()}, {"m": None}, app_name="a",
                                    llm_deployment=DEPLOYMENT, num_replicas=1,
                                    prefixes=ingress_args(config, str(tiny_model)))
        ingress._get_response = engine  # type: ignore[method-assign]
        system = {"role": "system", "content": "You triage tickets for Globex. " * 20}
        def request(path: str) -> Request:
            # As the tenant middleware leaves it (serving/ingress/ingress.py).
            return Request({"type": "http", "method": "POST", "path": path, "headers": [],
                            "query_string": b"", "state": {TENANT_STATE_KEY: tenant}})

        created = await ingress.create_prefix(PrefixCreateRequest(
            model="m", messages=[system]), request("/v1/prefixes"))
        assert created.status_code == 201 and sent[0].max_tokens == 1
        key = json.loads(created.body)["key"]
        assert json.loads(created.body)["home_replica"] is None  # pow2 keeps no index

        body = ChatCompletionRequest(model="m", max_tokens=4, messages=[
            system, {"role": "user", "content": "My printer is on fire."}])
        hits = REGISTRY.get_sample_value("cacheroute_prefix_hits_total") or 0
        response = await ingress.chat(body, request("/v1/chat/completions"))
        assert response.status_code == 200
        assert json.loads(response.body)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        assert REGISTRY.get_sample_value("cacheroute_prefix_hits_total") == hits + 1
        await asyncio.gather(*list(ingress._prefix_registry._pending))
        listed = json.loads((await ingress.list_prefixes(request("/v1/prefixes"))).body)["data"]
        assert [(p["key"], p["hits"]) for p in listed] == [(key, 1)]
        await ingress._prefix_registry.close()
    asyncio.run(main())
