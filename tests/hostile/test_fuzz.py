"""Chaos tier: the live stack's public API fuzzed from its own OpenAPI document.

Schemathesis reads `/openapi.json` from the running service (serving/ingress/openapi.py) and
generates requests for every operation, valid and invalid by the schema. Each response
must be a success or an OpenAI-shaped 4xx that the document declares: never a 5xx,
never an undocumented status, never an error body of another shape. The same document
fuzzed without the key must get 401 everywhere except the public paths. At the end
no replica may have restarted (tests/integration/replicas.py).

Bounded for CI: a few examples per operation from Schemathesis's generation phase
(its coverage phase enumerates hundreds of boundary values per field of the 60-field
chat body; test_bad_input.py sends a wrong type per field instead), derandomized (the
same cases every run), no example database, and the generation-size fields capped
(see `bound_generation`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from serving.ingress.auth import PUBLIC_PATHS
from tests.integration.conftest import Stack
from tests.integration.replicas import ReplicaSnapshot, assert_no_restart, snapshot

pytestmark = [pytest.mark.hostile, pytest.mark.integration]

# Examples per operation with the key. 15 operations x 12 keeps the file near a minute
# on 2 cores; derandomized, so a failure found once is found on every run.
EXAMPLES_PER_OPERATION = 12
# Without the key every request must be refused before the body matters.
EXAMPLES_WITHOUT_KEY = 3

CONFIG = schemathesis.Config.from_dict({"request-timeout": 120})

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]

# The fuzzer is here to test the service's validation, not the engine's speed: a
# schema-valid body may ask for 2,048 new tokens in each of n=16,384 sequences, minutes
# of a CPU engine per example. These fields are capped when the drawn value is larger;
# values that are invalid anyway (negative, zero, a wrong type) are left as drawn, so
# validation still sees them. The hand-written tests send the huge values on purpose.
GENERATION_CAPS = {"max_tokens": 2, "max_completion_tokens": 2, "n": 2, "best_of": 2,
                   "min_tokens": 1}


def bound_generation(body: Any, model: str) -> None:
    """Cap the generation-size fields of a drawn body in place, and name the served
    model wherever the draw put some string there: an unknown model is refused before
    any other validation, so random names would leave the engine's checks unexercised
    (unknown models have their own tests)."""
    if not isinstance(body, dict):
        return
    for key, cap in GENERATION_CAPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    if "messages" in body and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_completion_tokens"] = GENERATION_CAPS["max_completion_tokens"]
    if isinstance(body.get("model"), str):
        body["model"] = model


def assert_openai_error_shape(response: Any) -> None:
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert isinstance(error["message"], str) and error["message"]


def fuzz(stack: Stack, examples: int, check: Callable[[Any], None]) -> list[str]:
    """Run `check` on `examples` generated cases (valid and invalid by the schema) of
    every operation in the live document; one line per failing operation. Not shrunk:
    the first failing case is reported as drawn, which keeps a failing run short."""
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json", config=CONFIG)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
        try:
            strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
        except Exception:  # noqa: BLE001 - nothing in it can be made invalid (no input)
            pass

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                  suppress_health_check=list(HealthCheck))
        @given(case=st.one_of(strategies))
        def run(case: Any) -> None:
            check(case)

        try:
            run()
        except Exception as err:  # noqa: BLE001 - collected, reported together below
            failures.append(f"{operation.label}: {type(err).__name__}: {err}"[:3000])
    return failures


@pytest.fixture(scope="module")
def replicas_at_start(stack: Stack) -> ReplicaSnapshot:
    return snapshot(stack)


def test_openapi_document_is_public_and_declares_the_key(stack: Stack,
                                                         replicas_at_start: ReplicaSnapshot) -> None:
    resp = httpx.get(f"{stack.base_url}/openapi.json", timeout=60)
    assert resp.status_code == 200
    document = resp.json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "/v1/chat/completions" in document["paths"]
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{stack.base_url}{page}", timeout=60).status_code in (401, 404)


def test_fuzzed_requests_get_a_success_or_a_documented_4xx(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {stack.api_key}"}

    def check(case: Any) -> None:
        bound_generation(case.body, stack.model)
        response = case.call(headers=auth)
        try:
            case.validate_response(response, checks=CHECKS, headers=auth)
            assert_openai_error_shape(response)
        finally:
            if case.path == "/v1/prefixes" and case.method.upper() == "POST" \
                    and response.status_code in (200, 201):
                # Registered prefixes stay warm in the shared stack; leave none behind.
                httpx.delete(f"{stack.base_url}/v1/prefixes/{response.json()['key']}",
                             headers=auth, timeout=60).raise_for_status()

    failures = fuzz(stack, EXAMPLES_PER_OPERATION, check)
    assert not failures, "\n\n".join(failures)


def test_fuzzed_requests_without_the_key_get_401(stack: Stack) -> None:
    def check(case: Any) -> None:
        bound_generation(case.body, stack.model)
        response = case.call()
        assert response.status_code < 500, response.text
        if case.path in PUBLIC_PATHS:
            assert response.status_code == 200, (case.path, response.text)
        else:
            assert response.status_code == 401, (case.method, case.path, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"

    failures = fuzz(stack, EXAMPLES_WITHOUT_KEY, check)
    assert not failures, "\n\n".join(failures)


def test_no_replica_restarted_and_the_stack_still_answers(
        stack: Stack, replicas_at_start: ReplicaSnapshot) -> None:
    out = stack.client().completions.create(model=stack.model, prompt="Still there?",
                                            max_tokens=2, temperature=0)
    assert out.choices[0].text is not None
    assert_no_restart(replicas_at_start, snapshot(stack))
