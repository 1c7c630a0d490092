"""End-to-end: document analysis on the live stack (tests/integration/conftest.py).

Each test uploads its own document, made unique by a uuid in its name (part of the
anchor's first block), so no other test's traffic has cached it already. Documents
are scaled to the stack's 2,048-token window: one fits whole (about 1.2k tokens),
longer ones are cut into sections, and questions about them go to their sections.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

BLOCK_SIZE = 128  # the engines' (engine.block_size default)

TOPICS = [
    ("lighthouse", "The lighthouse keeper climbs the tower at dusk, trims the wick, polishes "
     "the great lens and logs every passing ship in a leather book."),
    ("orchard", "The orchard holds four hundred apple trees; pickers start in September and "
     "the cider press runs until the first frost."),
    ("salary", "Keepers are paid monthly: a base salary of 900 crowns, a hazard bonus in "
     "winter storms, and free lodging in the cottage beside the tower."),
    ("storms", "During storms the keeper must stay awake all night, sound the foghorn every "
     "minute and radio the harbour master when a vessel is in distress."),
    ("garden", "Behind the cottage a small garden grows potatoes, leeks and herbs, watered "
     "from a rain barrel that the keeper refills by hand."),
    ("history", "The first tower was built of timber in 1821, burned down in 1850 and was "
     "rebuilt in granite quarried from the cliffs nearby."),
]


def document(paragraphs_per_topic: int) -> str:
    parts = []
    for round_ in range(paragraphs_per_topic):
        for topic, text in TOPICS:
            parts.append(f"{topic.title()}, part {round_ + 1}. {text} "
                         f"This note on the {topic} was revised in year {1900 + round_}.")
    return "\n\n".join(parts)


def upload(http: httpx.Client, stack: Stack, text: str, **fields: Any) -> httpx.Response:
    return http.post("/v1/documents", json={"model": stack.model, "text": text,
                                            "name": f"Keeper's handbook {uuid.uuid4()}",
                                            **fields})


def ask(http: httpx.Client, doc_id: str, question: str, **fields: Any) -> dict[str, Any]:
    resp = http.post(f"/v1/documents/{doc_id}/ask",
                     json={"question": question, "max_tokens": 8, "temperature": 0, **fields})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["content"]
    return out


def ask_streamed(http: httpx.Client, doc_id: str, question: str) -> list[dict[str, Any]]:
    """The data events of a streamed answer, [DONE] checked and dropped."""
    with http.stream("POST", f"/v1/documents/{doc_id}/ask",
                     json={"question": question, "max_tokens": 8, "temperature": 0,
                           "stream": True}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def cached(answer: dict[str, Any]) -> int:
    return answer["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_a_document_is_cached_once_and_reused_by_every_question(stack: Stack) -> None:
    with stack.http() as http:
        resp = upload(http, stack, document(4))
        assert resp.status_code == 201, resp.text
        doc = resp.json()
        anchor = doc["anchor"]
        assert doc["id"].startswith("doc-") and doc["chunks"] > 1
        assert anchor["mode"] == "whole" and 1000 < doc["tokens"] < 1700
        assert anchor["cacheable_tokens"] == anchor["tokens"] // BLOCK_SIZE * BLOCK_SIZE
        # Prewarmed through the router: its home holds every block of the document.
        assert anchor["holders"] == [anchor["home_replica"]]

        questions = ["What is the keeper's salary?", "What bonus do keepers get in winter?",
                     "Where do keepers live, and is the lodging free?"]
        answers = [ask(http, doc["id"], q) for q in questions]
        for answer in answers:
            assert answer["document"]["mode"] == "whole"
            # The whole document context, rounded down to blocks, came from cache --
            # from the first question on, since the upload prewarmed it.
            assert cached(answer) >= anchor["cacheable_tokens"]
            assert answer["usage"]["prompt_tokens"] > anchor["tokens"]

        # Streamed: the first event names the document, the last carries the usage.
        events = ask_streamed(http, doc["id"], "Who pays for the keeper's cottage?")
        assert events[0]["document"]["id"] == doc["id"]
        text = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in events if e["choices"])
        assert text
        streamed_usage = events[-1]["usage"]
        assert streamed_usage["prompt_tokens_details"]["cached_tokens"] >= (
            anchor["cacheable_tokens"])

        listed = http.get("/v1/documents").json()
        assert listed["object"] == "list"
        entry = next(d for d in listed["data"] if d["id"] == doc["id"])
        assert entry["asks"] == 4
        assert entry["cached_tokens"] == sum(cached(a) for a in answers) + (
            streamed_usage["prompt_tokens_details"]["cached_tokens"])

        # The registered anchor counted each question as a hit.
        prefixes = http.get("/v1/prefixes").json()["data"]
        prefix = next(p for p in prefixes if p["key"] == anchor["prefix_key"])
        assert prefix["hits"] + prefix["misses"] >= 1 and prefix["misses"] == 0

        deleted = http.delete(f"/v1/documents/{doc['id']}")
        assert deleted.status_code == 200, deleted.text
        body = deleted.json()
        assert (body["object"], body["id"], body["deleted"]) == (
            "document.deleted", doc["id"], True)
        assert body["holders_before"] == anchor["holders"]
        assert body["holders_after"] == []  # the router's ownership of its blocks is gone
        assert http.get(f"/v1/documents/{doc['id']}").status_code == 404
        assert doc["id"] not in {d["id"] for d in http.get("/v1/documents").json()["data"]}
        keys = {p["key"] for p in http.get("/v1/prefixes").json()["data"]}
        assert anchor["prefix_key"] not in keys
        again = http.delete(f"/v1/documents/{doc['id']}")
        assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


def test_a_long_document_is_asked_through_its_sections(stack: Stack) -> None:
    with stack.http() as http:
        resp = upload(http, stack, document(14))
        assert resp.status_code == 201, resp.text
        doc = resp.json()
        assert doc["tokens"] > 4000 and doc["anchor"]["mode"] == "sections"
        sections = doc["sections"]
        assert len(sections) >= 3
        for section in sections:
            # Each section is prewarmed: its home holds its blocks.
            assert section["cacheable_tokens"] >= BLOCK_SIZE
            assert section["holders"] == [section["home_replica"]]

        first = ask(http, doc["id"], "How much is the keeper's salary?")
        related = ask(http, doc["id"], "Is the keeper paid extra during winter storms?")
        repeat = ask(http, doc["id"], "How much is the keeper's salary?")
        for answer in (first, related, repeat):
            meta = answer["document"]
            assert meta["mode"] == "sections" and 1 <= len(meta["sections"]) <= 3
            # Routed to each section's holder: each leg's anchor is cached.
            legs = meta.get("legs") or [{"section": meta["sections"][0]["index"],
                                         "cached_tokens": cached(answer),
                                         "prompt_tokens": answer["usage"]["prompt_tokens"]}]
            for leg in legs:
                assert leg["cached_tokens"] >= sections[leg["section"]]["cacheable_tokens"]
                assert leg["prompt_tokens"] + 8 <= 2048
        # The same question goes to the same sections, and each leg is all cached.
        assert repeat["document"]["sections"] == first["document"]["sections"]
        for leg in repeat["document"].get("legs") or [{
                "cached_tokens": cached(repeat),
                "prompt_tokens": repeat["usage"]["prompt_tokens"]}]:
            assert leg["cached_tokens"] == (leg["prompt_tokens"] - 1) // BLOCK_SIZE * BLOCK_SIZE

        naive = ask(http, doc["id"], "How much is the keeper's salary?",
                    context_order="similarity")
        assert naive["document"]["context_order"] == "similarity"
        deleted = http.delete(f"/v1/documents/{doc['id']}").json()
        assert deleted["holders_after"] == []  # every section's ownership is gone
        keys = {p["key"] for p in http.get("/v1/prefixes").json()["data"]}
        assert not keys & {s["prefix_key"] for s in sections}


# Subjects with no word in common, one per passage of the long document below.
SUBJECTS = ["lighthouse", "orchard", "glacier", "turbine", "violin", "quarry", "furnace",
            "canyon", "meadow", "compass", "lantern", "harbour", "bakery", "railway",
            "beehive", "telescope", "vineyard", "shipyard", "library", "volcano", "monastery",
            "brewery", "sawmill", "aqueduct", "observatory", "greenhouse", "windmill",
            "tannery", "pottery", "ferry", "reservoir", "foundry", "stable", "granary",
            "chapel", "pharmacy", "printing press", "salt marsh", "weather station",
            "clock tower"]


def passage(subject: str, number: int) -> str:
    """About 150 words on one subject, naming it in every sentence."""
    return " ".join(
        f"Entry {number}.{k} of the {subject} ledger: the {subject} crew inspected the "
        f"{subject} at {6 + k} o'clock, counted {number * 7 + k} items of {subject} stock and "
        f"noted that the {subject} needs {k + 2} more days of work." for k in range(5))


def test_questions_about_each_section_of_a_long_document_come_mostly_from_cache(
        stack: Stack) -> None:
    """A document about four windows long is cut into sections; a question about a
    passage, asked with the openai client, is answered from the section holding it,
    at least 70 % of its prompt from cache."""
    paragraphs = [passage(subject, n) for n, subject in enumerate(SUBJECTS)]
    text = "\n\n".join(paragraphs)
    with stack.http() as http:
        resp = upload(http, stack, text)
        assert resp.status_code == 201, resp.text
        doc = resp.json()
        assert 4 * 2048 * 0.75 < doc["tokens"] < 4 * 2048 * 1.5, doc["tokens"]
        sections = doc["sections"]
        assert doc["anchor"]["mode"] == "sections" and len(sections) >= 4

        def holding(index: int) -> str:
            """A subject whose passage lies inside section ``index`` and no other."""
            a, b = sections[index]["chars"]
            others = [s["chars"] for s in sections if s["index"] != index]
            for subject, para in zip(SUBJECTS, paragraphs):
                start = text.index(para)
                end = start + len(para)
                if a <= start and end <= b and not any(x < end and start < y
                                                       for x, y in others):
                    return subject
            raise AssertionError(f"no passage lies in section {index} alone")

        asked = [(s["index"], holding(s["index"])) for s in sections]
        ask(http, doc["id"], f"What does the ledger say about the {asked[0][1]}?")
        # Asked as a client would, with the openai client: a chat naming the document.
        client = stack.client()
        for index, subject in asked:
            answer = client.chat.completions.create(
                model=stack.model, max_tokens=8, temperature=0,
                extra_headers={"x-document-id": doc["id"]},
                messages=[{"role": "user",
                           "content": f"What does the ledger say about the {subject}?"}])
            named = [s["index"] for s in answer.model_dump()["document"]["sections"]]
            assert index in named, (subject, index, named)
            usage = answer.usage
            assert usage is not None and usage.prompt_tokens_details is not None
            share = usage.prompt_tokens_details.cached_tokens / usage.prompt_tokens
            assert share >= 0.7, (subject, usage.prompt_tokens_details.cached_tokens,
                                  usage.prompt_tokens)
        assert http.delete(f"/v1/documents/{doc['id']}").status_code == 200


def test_a_chat_naming_a_document_caches_the_conversation_as_it_grows(stack: Stack) -> None:
    with stack.http() as http:
        doc = upload(http, stack, document(4)).json()
    anchor = doc["anchor"]
    client = stack.client()
    header = {"x-document-id": doc["id"]}
    # A first question long enough to end past the anchor's last full block.
    first_q = ("Summarise what the handbook says about the keeper's duties at dusk, the "
               "lens, the logbook, the foghorn, the radio, the garden and the cottage, "
               "and say which of these duties change during winter storms. ") * 3
    first = client.chat.completions.create(
        model=stack.model, messages=[{"role": "user", "content": first_q}], max_tokens=8,
        temperature=0, extra_headers=header)
    assert first.model_dump()["document"]["id"] == doc["id"]
    assert first.usage.prompt_tokens_details.cached_tokens >= anchor["cacheable_tokens"]
    first_blocks = first.usage.prompt_tokens // BLOCK_SIZE * BLOCK_SIZE
    assert first_blocks > anchor["cacheable_tokens"]  # the test means something

    # The second turn resends the first (as asked) and its answer: all of the first
    # turn's full blocks come from cache, not just the document's.
    turns = [{"role": "user", "content": first_q},
             {"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And what is the keeper paid?"}]
    stream = client.chat.completions.create(
        model=stack.model, messages=turns, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_headers=header)
    chunks = list(stream)
    assert chunks[0].model_dump()["document"]["id"] == doc["id"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens >= first_blocks

    with pytest.raises(openai.BadRequestError) as err:  # the document is the system message
        client.chat.completions.create(
            model=stack.model, max_tokens=8, extra_headers=header,
            messages=[{"role": "system", "content": "Be brief."}, turns[-1]])
    assert err.value.body["param"] == "messages"
    with stack.http() as http:
        assert http.get(f"/v1/documents/{doc['id']}").json()["asks"] == 2
        assert http.delete(f"/v1/documents/{doc['id']}").status_code == 200


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"text": ""}, 400, "invalid_request"),
        ({"text": "  \n\n  "}, 400, "invalid_request"),
        ({"text": 12345}, 400, "invalid_request"),
        ({"text": None}, 400, "invalid_request"),
        ({"name": 7}, 400, "invalid_request"),
        ({"id": "doc-1"}, 400, "invalid_request"),
        ({"model": "no-such-model"}, 404, "model_not_found"),
        ({"text": "All work and no play. " * 50_000}, 413, "request_too_large"),
    ],
)
def test_bad_uploads_get_openai_shaped_4xx(stack: Stack, fields: dict, status: int,
                                           code: str) -> None:
    body = {"model": stack.model, "text": document(1), **fields}
    with stack.http() as http:
        resp = http.post("/v1/documents", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert error["message"]


def test_bad_questions_get_openai_shaped_4xx(stack: Stack) -> None:
    with stack.http() as http:
        doc_id = upload(http, stack, document(1)).json()["id"]
        cases = [
            ("doc-" + "0" * 32, {"question": "Why?"}, 404, "not_found"),
            ("nonsense", {"question": "Why?"}, 404, "not_found"),
            (doc_id, {"question": ""}, 400, "invalid_request"),
            (doc_id, {"question": "   "}, 400, "invalid_request"),
            (doc_id, {"question": "Why?", "max_tokens": 0}, 400, "invalid_request"),
            (doc_id, {"question": "Why?", "max_tokens": 5000}, 400, "invalid_request"),
            (doc_id, {"question": "Why?", "stream": [1]}, 400, "invalid_request"),
            (doc_id, {"question": "Why?", "context_order": "random"}, 400, "invalid_request"),
        ]
        for doc, body, status, code in cases:
            resp = http.post(f"/v1/documents/{doc}/ask", json=body)
            assert resp.status_code == status, (body, resp.text)
            assert resp.json()["error"]["code"] == code
        assert http.delete(f"/v1/documents/{doc_id}").status_code == 200
    assert httpx.get(f"{stack.base_url}/v1/documents", timeout=30).status_code == 401
