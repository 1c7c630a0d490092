"""Tenants from the config: which key acts for whom, the salt that keeps them apart,
and the middleware that puts a request's tenant in its scope."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.config import ConfigError, validate_config
from serving.tenants.identity import ANONYMOUS, DEFAULT, Tenants, tenant_of, tenant_salt


def _config(**server):
    return validate_config({"server": {"api_keys_env": None, **server},
                            "tenant_limits": {"max_prefixes": 8}})


def _two_tenants(**limits):
    return _config(tenants={"acme": {"api_keys": ["a-1", "a-2"]},
                            "globex": {"api_keys": ["g-1"], "limits": limits}})


def test_no_key_is_one_anonymous_tenant_and_says_so():
    tenants = Tenants.from_config(_config())
    assert not tenants.authenticated
    assert tenants.anonymous.name == ANONYMOUS
    assert "anonymous" in tenants.describe()
    assert tenants.resolve(b"") is None


def test_each_key_resolves_to_its_tenant_and_unknown_keys_to_none():
    tenants = Tenants.from_config(_two_tenants())
    assert tenants.authenticated
    assert tenants.resolve(b"a-1").name == tenants.resolve(b"a-2").name == "acme"
    assert tenants.resolve(b"g-1").name == "globex"
    assert tenants.resolve(b"a-") is None and tenants.resolve(b"") is None
    assert tenants.describe() == "2 tenant(s) by API key: acme, globex"


def test_flat_keys_belong_to_the_default_tenant():
    tenants = Tenants.from_config(_config(api_keys=["k"], tenants={"acme": {"api_keys": ["a"]}}))
    assert tenants.resolve(b"k").name == DEFAULT
    assert tenants.resolve(b"a").name == "acme"


def test_tenant_keys_from_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACME_KEYS", " e-1 , e-2,")
    tenants = Tenants.from_config(_config(tenants={"acme": {"api_keys_env": "ACME_KEYS"}}))
    assert tenants.resolve(b"e-2").name == "acme"


def test_a_key_shared_by_two_tenants_is_refused():
    config = _config(tenants={"acme": {"api_keys": ["same"]}, "globex": {"api_keys": ["same"]}})
    with pytest.raises(ValueError, match="also belongs"):
        Tenants.from_config(config)


def test_a_tenant_limit_overrides_only_the_fields_it_sets():
    tenants = Tenants.from_config(_two_tenants(requests_per_s=2))
    globex, acme = tenants.by_name["globex"].limits, tenants.by_name["acme"].limits
    assert (globex.requests_per_s, globex.max_prefixes) == (2, 8)
    assert (acme.requests_per_s, acme.max_prefixes) == (None, 8)


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "a/b"])
def test_tenant_names_are_plain(name: str):
    with pytest.raises(ConfigError, match="tenants"):
        _config(tenants={name: {"api_keys": ["k"]}})


def test_salts_differ_per_tenant_and_a_client_salt_only_narrows():
    tenants = Tenants.from_config(_two_tenants())
    acme, globex = tenants.by_name["acme"], tenants.by_name["globex"]
    assert acme.cache_salt() != globex.cache_salt()
    assert acme.cache_salt("x").startswith(acme.salt)
    # No client suffix turns one tenant's salt into another's: the head is fixed-length.
    assert len(tenant_salt("a")) == len(tenant_salt("a-much-longer-name"))
    assert not globex.cache_salt(acme.salt).startswith(acme.salt)


def _app(config) -> TestClient:
    from serving.ingress.auth import TenantMiddleware

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": tenant_of(request).name})

    app = Starlette(routes=[Route("/v1/whoami", whoami), Route("/health", whoami)])
    app.add_middleware(TenantMiddleware, tenants=Tenants.from_config(config))
    return TestClient(app)


def test_the_middleware_names_the_bearer_tokens_tenant():
    client = _app(_two_tenants())
    answer = client.get("/v1/whoami", headers={"Authorization": "Bearer g-1"})
    assert answer.status_code == 200 and answer.json() == {"tenant": "globex"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Basic a-1"}])
def test_the_middleware_refuses_a_missing_or_wrong_key_in_openai_shape(headers):
    answer = _app(_two_tenants()).get("/v1/whoami", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_without_keys_every_caller_is_the_anonymous_tenant():
    answer = _app(_config()).get("/v1/whoami")
    assert answer.json() == {"tenant": ANONYMOUS}


def test_tenant_of_a_request_the_middleware_did_not_see_is_an_error():
    with pytest.raises(LookupError):
        tenant_of(Request({"type": "http", "headers": []}))


@pytest.mark.parametrize("client_salt", ["a/b@c\\d", "x" * 10_000, "\u00e9t\u00e9"])
def test_any_client_salt_gives_a_salt_vllm_accepts(client_salt: str):
    """vLLM refuses a salt over 128 characters or with '@', '/', '\\' or NUL."""
    salt = Tenants.from_config(_two_tenants()).by_name["acme"].cache_salt(client_salt)
    assert len(salt) <= 128 and not set(salt) & {"@", "/", "\\", "\0"}
    assert salt.isascii()
