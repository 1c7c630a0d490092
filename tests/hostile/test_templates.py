"""Hostile tier: a client's chat template never renders, in the router or the engine.

A body carrying its own Jinja template (top-level `chat_template`, or smuggled in
`chat_template_kwargs`) would have the router render it on the ingress before any
engine refused it: three nested loops render for hours and hold every other request's
routing meanwhile. The ingress refuses such bodies with an OpenAI-shaped 400 before
routing (serving/ingress/chat_templates.py). Sent here through the `openai` client,
several at once, while ordinary chats are served.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.integration.conftest import Stack

pytestmark = [pytest.mark.hostile, pytest.mark.integration]

# Renders for hours if anything renders it (10^10 loop steps).
HOSTILE = ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
           "{% endfor %}hi")
USER = [{"role": "user", "content": "Say hi."}]
# Far below a render of HOSTILE (hours), far above a refusal on a loaded 2-core machine.
REFUSED_WITHIN_S = 10.0


def _refused(stack: Stack, extra_body: dict) -> tuple[openai.BadRequestError, float]:
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        stack.client().chat.completions.create(model=stack.model, messages=USER, max_tokens=2,
                                               extra_body=extra_body)
    return refused.value, time.monotonic() - started


@pytest.mark.parametrize(("extra_body", "param"), [
    ({"chat_template": HOSTILE}, "chat_template"),
    ({"chat_template_kwargs": {"chat_template": HOSTILE}}, "chat_template_kwargs.chat_template"),
    ({"chat_template_kwargs": {"enable_thinking": True}}, "chat_template_kwargs.enable_thinking"),
])
def test_client_templates_and_unread_kwargs_get_a_400_naming_the_parameter(
        stack: Stack, extra_body: dict, param: str) -> None:
    error, elapsed_s = _refused(stack, extra_body)
    assert error.status_code == 400
    body = error.body if isinstance(error.body, dict) else {}
    assert body.get("param") == param and body.get("code") == "unsupported_parameter"
    assert body.get("type") == "invalid_request_error"
    assert elapsed_s < REFUSED_WITHIN_S


def test_template_bodies_do_not_hold_other_requests(stack: Stack) -> None:
    """Hostile bodies sent while ordinary chats run: every hostile one is refused and
    every ordinary one answered, none of them waiting on a render."""
    client = stack.client()

    def ordinary(i: int) -> str:
        out = client.chat.completions.create(
            model=stack.model, max_tokens=4, temperature=0,
            messages=[{"role": "user", "content": f"Count to {i}."}])
        return out.choices[0].finish_reason

    def hostile(_: int) -> int:
        return _refused(stack, {"chat_template_kwargs": {"chat_template": HOSTILE}})[0].status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        refusals = [pool.submit(hostile, i) for i in range(4)]
        answers = [pool.submit(ordinary, i) for i in range(4)]
        assert [f.result(timeout=120) for f in refusals] == [400] * 4
        assert all(f.result(timeout=120) in ("stop", "length") for f in answers)
