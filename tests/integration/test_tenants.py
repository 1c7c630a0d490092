"""End-to-end: tenants are isolated on the live stack (docs/security.md).

The shared stack has tenants `default`, `acme` and `globex` (tests/integration/conftest.py),
globex with a quota of GLOBEX_MAX_PREFIXES prefixes. Each test's texts carry a uuid in
their first block, so no other test's traffic has cached them. Every generation is one
token: only prefills are measured.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from serving.tenants.identity import tenant_salt
from tests.integration.conftest import ACME_KEY, GLOBEX_KEY, GLOBEX_MAX_PREFIXES, Stack

pytestmark = pytest.mark.integration

# Distinct sentences: ~600 tokens, several 128-token blocks of the engines' cache.
FACTS = " ".join(f"Fact {i}: the depot in sector {i} ships {i * 7} crates of item {i * 13} "
                 f"every {i % 5 + 1} days." for i in range(30))
SALTS = (tenant_salt("acme"), tenant_salt("globex"), tenant_salt("default"))


def unique(text: str) -> str:
    return f"Ledger {uuid.uuid4()}. {text}"


def assert_no_salt(*responses: httpx.Response) -> None:
    for resp in responses:
        for salt in SALTS:
            assert salt not in resp.text, resp.request.url


def cached_tokens(stack: Stack, prompt: str) -> int:
    out = stack.client().chat.completions.create(
        model=stack.model, max_tokens=1, temperature=0,
        messages=[{"role": "system", "content": prompt},
                  {"role": "user", "content": "Which sector ships most?"}])
    details = out.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def keys(http: httpx.Client, path: str, field: str) -> set[str]:
    resp = http.get(path)
    assert resp.status_code == 200, resp.text
    assert_no_salt(resp)
    return {item[field] for item in resp.json()["data"]}


def test_a_tenants_cache_is_its_own(stack: Stack) -> None:
    acme, globex = stack.as_tenant(ACME_KEY), stack.as_tenant(GLOBEX_KEY)
    prompt = unique(FACTS)
    assert cached_tokens(acme, prompt) == 0  # cold
    assert cached_tokens(acme, prompt) > 0  # acme's own cache serves it
    # The exact prompt acme has cached: globex sees nothing of it.
    assert cached_tokens(globex, prompt) == 0


def test_another_tenants_prefix_and_document_are_unknown(stack: Stack) -> None:
    acme, globex = stack.as_tenant(ACME_KEY), stack.as_tenant(GLOBEX_KEY)
    system = {"role": "system", "content": unique(FACTS)}
    with acme.http() as a, globex.http() as g:
        prefix = a.post("/v1/prefixes", json={"model": stack.model, "messages": [system]})
        assert prefix.status_code == 201, prefix.text
        document = a.post("/v1/documents", json={"model": stack.model, "name": "ledger",
                                                 "text": unique(FACTS)})
        assert document.status_code == 201, document.text
        assert_no_salt(prefix, document)
        key, doc_id = prefix.json()["key"], document.json()["id"]
        try:
            unknown_key, unknown_doc = "f" * 64, "doc-" + "f" * 32
            chat = {"model": stack.model, "max_tokens": 1,
                    "messages": [{"role": "user", "content": "Which sector?"}]}

            def probes(k: str, d: str) -> list[httpx.Response]:
                return [g.delete(f"/v1/prefixes/{k}"),
                        g.get(f"/v1/documents/{d}"),
                        g.post(f"/v1/documents/{d}/ask",
                               json={"question": "Which sector?", "max_tokens": 1}),
                        g.post("/v1/chat/completions", json=chat,
                               headers={"x-document-id": d}),
                        g.delete(f"/v1/documents/{d}")]

            # Exactly as for ids nobody has: 404, the same words but for the id.
            for theirs, nobodys in zip(probes(key, doc_id), probes(unknown_key, unknown_doc)):
                assert theirs.status_code == nobodys.status_code == 404, theirs.text
                expected = nobodys.text.replace(unknown_key, key).replace(unknown_doc, doc_id)
                assert theirs.json() == json.loads(expected)
            assert key not in keys(g, "/v1/prefixes", "key")
            assert doc_id not in keys(g, "/v1/documents", "id")
            # Still acme's, untouched by globex's attempts.
            assert key in keys(a, "/v1/prefixes", "key")
            assert doc_id in keys(a, "/v1/documents", "id")
            answer = a.post(f"/v1/documents/{doc_id}/ask",
                            json={"question": "Which sector ships most?", "max_tokens": 1})
            assert answer.status_code == 200, answer.text
            assert_no_salt(answer)
        finally:
            a.delete(f"/v1/prefixes/{key}")
            a.delete(f"/v1/documents/{doc_id}")


def test_a_tenant_over_its_quota_evicts_only_its_own(stack: Stack) -> None:
    acme, globex = stack.as_tenant(ACME_KEY), stack.as_tenant(GLOBEX_KEY)

    def register(http: httpx.Client, label: str) -> dict[str, Any]:
        system = {"role": "system", "content": unique(f"{label}. {FACTS[:900]}")}
        resp = http.post("/v1/prefixes", json={"model": stack.model, "messages": [system],
                                                "cache_salt": label})
        assert resp.status_code == 201, resp.text
        assert_no_salt(resp)
        # Only the client's own narrowing value comes back.
        assert resp.json()["cache_salt"] == label and "tenant" not in resp.json()
        return resp.json()

    with acme.http() as a, globex.http() as g:
        mine = register(a, "acme-0")["key"]
        theirs = []
        try:
            for i in range(GLOBEX_MAX_PREFIXES + 1):
                theirs.append(register(g, f"globex-{i}")["key"])
            listed = keys(g, "/v1/prefixes", "key")
            assert theirs[0] not in listed  # its least recently used went
            assert set(theirs[1:]) <= listed
            assert len(listed) == GLOBEX_MAX_PREFIXES
            assert mine in keys(a, "/v1/prefixes", "key")
        finally:
            for key in theirs:
                g.delete(f"/v1/prefixes/{key}")
            a.delete(f"/v1/prefixes/{mine}")
