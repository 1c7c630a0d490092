"""Hostile tier: a tenant over its request rate is refused, and only that tenant.

The shared stack has a tenant `metered` of its own key, with a rate a few requests
cannot stay under (tests/integration/conftest.py TENANTS). Its requests sent back to
back through the `openai` client (no retries) get, past its burst, OpenAI's 429
`rate_limit_exceeded` with a `Retry-After` the client can wait on
(serving/ingress/admission_limits.py), while the `default` tenant's key is served;
the refusals show on `/metrics` by reason.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import METERED_BURST, METERED_KEY, TENANTS, Stack

pytestmark = [pytest.mark.hostile, pytest.mark.integration]

REFUSED = "cacheroute_ingress_refused_requests"


def refused_for_rate(stack: Stack) -> float:
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name == REFUSED:
            for sample in family.samples:
                if sample.name == f"{REFUSED}_total" and sample.labels.get("reason") == "rate":
                    return sample.value
    raise AssertionError(f"{REFUSED}_total{{reason=\"rate\"}} is not on /metrics")


def test_a_tenant_over_its_rate_gets_429_with_retry_after(stack: Stack) -> None:
    metered = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=METERED_KEY,
                            max_retries=0, timeout=60)
    before = refused_for_rate(stack)
    # A full bucket admits the burst; the bucket refills one token every 1 / rate
    # seconds, so of burst + 2 requests sent back to back one is refused unless they
    # took longer than that.
    for _ in range(METERED_BURST):
        assert [m.id for m in metered.models.list()] == [stack.model]
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(2):
            metered.models.list()
    error = refused.value
    assert error.status_code == 429
    assert (error.code, error.type) == ("rate_limit_exceeded", "requests")
    retry_after = int(error.response.headers["retry-after"])
    rate = TENANTS["metered"]["limits"]["requests_per_s"]
    assert 1 <= retry_after <= math.ceil(1 / rate)
    # Another tenant is served meanwhile, a generation included.
    assert [m.id for m in stack.client().models.list()] == [stack.model]
    out = stack.client().completions.create(model=stack.model, prompt="Still served:",
                                            max_tokens=1, temperature=0)
    assert out.choices[0].text is not None
    assert refused_for_rate(stack) >= before + 1
