"""End-to-end: the prefix registry on the live stack (its state in the session's
redis-server when one is installed, tests/integration/conftest.py).

Each test registers its own system prompt, made unique by a uuid in its first block,
so no other test's traffic has cached it already.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

BLOCK_SIZE = 128  # the engines' (engine.block_size default)

RULES = " ".join(
    f"Rule {i}: greet the customer, quote ticket section {i}, and never promise refund {i * 3}."
    for i in range(60)
)


def system_prompt() -> dict[str, str]:
    return {"role": "system", "content": f"Help desk {uuid.uuid4()}. {RULES}"}


def register(http: httpx.Client, stack: Stack, messages: list[dict],
             **fields: Any) -> httpx.Response:
    return http.post("/v1/prefixes", json={"model": stack.model, "messages": messages, **fields})


def listed(http: httpx.Client, key: str) -> dict | None:
    resp = http.get("/v1/prefixes")
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "list"
    return next((p for p in resp.json()["data"] if p["key"] == key), None)


def wait_for_hits(http: httpx.Client, key: str, hits: int, timeout_s: float = 15.0) -> dict:
    # The counters are written to the store just after the response leaves.
    deadline = time.monotonic() + timeout_s
    while True:
        entry = listed(http, key)
        assert entry is not None
        if entry["hits"] >= hits or time.monotonic() > deadline:
            return entry
        time.sleep(0.2)


def test_registered_prefix_is_warm_for_the_first_request(stack: Stack) -> None:
    system = system_prompt()
    with stack.http() as http:
        resp = register(http, stack, [system], ttl_s=600)
        assert resp.status_code == 201, resp.text
        prefix = resp.json()
        assert re.fullmatch(r"[0-9a-f]{64}", prefix["key"])
        assert prefix["prefix_tokens"] > 1000
        assert prefix["cacheable_tokens"] == prefix["prefix_tokens"] // BLOCK_SIZE * BLOCK_SIZE
        assert prefix["home_replica"]
        assert prefix["expires_at"] == pytest.approx(prefix["created_at"] + 600)

        out = stack.client().chat.completions.create(
            model=stack.model, max_tokens=2, temperature=0,
            messages=[system, {"role": "user", "content": "Which rule covers refunds?"}])
        # The very first real request: every full block of the prefix was already cached.
        assert out.usage.prompt_tokens_details.cached_tokens >= prefix["cacheable_tokens"]

        entry = wait_for_hits(http, prefix["key"], 1)
        assert (entry["hits"], entry["misses"]) == (1, 0)
        assert entry["home_replica"] == prefix["home_replica"]
        assert entry["last_used_at"] >= entry["created_at"]

        # /metrics is public: aggregates only, no label naming a prefix.
        metrics = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
        hits = [line for line in metrics.splitlines()
                if line.startswith("cacheroute_prefix_hits_total")]
        assert len(hits) == 1 and float(hits[0].split()[-1]) >= 1
        assert prefix["key"][:12] not in metrics


def test_same_content_same_key_and_tenants_are_apart(stack: Stack) -> None:
    system = system_prompt()
    with stack.http() as http:
        first = register(http, stack, [system])
        assert first.status_code == 201, first.text
        again = register(http, stack, [system], ttl_s=120)
        assert again.status_code == 200
        assert again.json()["key"] == first.json()["key"]
        assert again.json()["ttl_s"] == 120

        tenant = register(http, stack, [system], tenant="acme")
        assert tenant.status_code == 201
        assert tenant.json()["key"] != first.json()["key"]
        # A tenant's prefix is cached under its cache_salt: its requests find it.
        out = stack.client().chat.completions.create(
            model=stack.model, max_tokens=2, temperature=0, extra_body={"cache_salt": "acme"},
            messages=[system, {"role": "user", "content": "Hello?"}])
        assert out.usage.prompt_tokens_details.cached_tokens >= tenant.json()["cacheable_tokens"]
        assert wait_for_hits(http, tenant.json()["key"], 1)["hits"] == 1


def test_state_lives_in_redis(stack: Stack, redis_url: str | None) -> None:
    if redis_url is None:
        pytest.skip("redis-server not installed: the stack uses the in-process store")
    import redis

    from serving.config import ServiceConfig
    from serving.prefixes.store_redis import REDIS_TTL_SLACK_S, namespace_of

    with stack.http() as http:
        key = register(http, stack, [system_prompt()], ttl_s=600).json()["key"]
    # Keys under the deployment's namespace: the configured name, deployment and model.
    deployment = ServiceConfig.model_validate(
        {"model": {"id": stack.model}}).llm_deployment_name()
    namespace = namespace_of("cacheroute", deployment, [stack.model])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        fields = client.hgetall(f"{{{namespace}}}:prefixes:p:{key}")
        ttl = client.ttl(f"{{{namespace}}}:prefixes:p:{key}")
    finally:
        client.close()
    assert int(fields["prefix_tokens"]) > 1000
    assert fields["model"] == stack.model
    assert fields["owner"] == "default"  # the flat API key's tenant
    assert 600 < ttl <= 600 + REDIS_TTL_SLACK_S


def test_delete_then_unknown(stack: Stack) -> None:
    with stack.http() as http:
        key = register(http, stack, [system_prompt()]).json()["key"]
        resp = http.delete(f"/v1/prefixes/{key}")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"object": "prefix.deleted", "key": key, "deleted": True}
        assert listed(http, key) is None
        again = http.delete(f"/v1/prefixes/{key}")
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"ttl_s": -1}, 400, "invalid_request"),
        ({"ttl_s": "soon"}, 400, "invalid_request"),
        ({"ttl_s": 10**9}, 400, "invalid_request"),
        ({"messages": []}, 400, "invalid_request"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, 400, "invalid_request"),
        ({"key": "0" * 64}, 400, "invalid_request"),
        ({"model": "no-such-model"}, 404, "model_not_found"),
        ({"messages": [{"role": "system", "content": "lorem ipsum dolor " * 3000}]}, 413,
         "request_too_large"),
    ],
)
def test_bad_registrations_get_openai_shaped_4xx(stack: Stack, fields: dict, status: int,
                                                 code: str) -> None:
    body = {"model": stack.model, "messages": [system_prompt()], **fields}
    with stack.http() as http:
        resp = http.post("/v1/prefixes", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert error["message"]


@pytest.mark.parametrize("key", ["0" * 64, "not-a-key"])
def test_unknown_key_is_404(stack: Stack, key: str) -> None:
    with stack.http() as http:
        resp = http.delete(f"/v1/prefixes/{key}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_registry_needs_the_api_key(stack: Stack) -> None:
    resp = httpx.get(f"{stack.base_url}/v1/prefixes", timeout=30)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
