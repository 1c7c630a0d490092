"""Synthetic tokens and memoised prefix hashing equal the engine's chained hashes."""

from __future__ import annotations

from itertools import chain

import pytest

from bench.sim.prompts import PromptHasher, sim_requests
from bench.sim.tokens import SyntheticTokenizer, prefix_text
from bench.trace import TraceRequest
from router import PrefixHasher


def make_chat(system: str, user: str, t: float = 0.0) -> TraceRequest:
    return TraceRequest(t=t, max_tokens=4, messages=(
        {"role": "system", "content": system}, {"role": "user", "content": user}))


def test_synthetic_ids_are_stable_and_split_digits_and_marks() -> None:
    tokenizer = SyntheticTokenizer()
    ids = tokenizer.encode("Rule 12: check it.")
    assert len(ids) == 7  # Rule, 1, 2, :, check, it, .
    assert ids == SyntheticTokenizer().encode("Rule 12: check it.")
    assert ids[1] != ids[2]
    # A fixed value: changing the mapping changes every simulated hash.
    assert tokenizer.piece_id("Rule") == 16 + int.from_bytes(
        __import__("hashlib").blake2b(b"Rule", digest_size=8).digest(), "big") % (49152 - 16)


def test_equal_messages_are_the_same_tuple_object() -> None:
    tokenizer = SyntheticTokenizer()
    first = tokenizer.parts(make_chat("shared system prompt", "q1"))
    second = tokenizer.parts(make_chat("shared system prompt", "q2"))
    assert first[0] is second[0] and first[1] != second[1]


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_memoised_hashes_equal_hashing_the_whole_prompt(block_size: int) -> None:
    tokenizer = SyntheticTokenizer()
    hasher = PromptHasher(block_size)
    whole = PrefixHasher(block_size)
    for user in ("short", "a longer question with many words in it", ""):
        parts = tokenizer.parts(make_chat("policy text " * 7, user))
        tokens = list(chain.from_iterable(parts))
        assert hasher.hash_parts(parts) == (len(tokens), whole.block_hashes(tokens))


def test_continuing_a_chain_equals_hashing_it_whole() -> None:
    hasher = PrefixHasher(4)
    head, tail = list(range(8)), list(range(100, 110))
    digests = hasher.digests(head)
    assert hasher.digests(head + tail) == digests + hasher.digests(tail, parent=digests[-1])


def test_requests_keep_what_routing_needs_and_refuse_unsorted_traces() -> None:
    trace = [make_chat("You are helpful.", "Hi", t=0.0), make_chat("x", "y", t=0.5)]
    requests = list(sim_requests(trace, SyntheticTokenizer(), PromptHasher(4), with_text=True))
    assert requests[0].text == "You are helpful.Hi" == prefix_text(trace[0])
    # 9 (framed system message) + 6 (user) + 3 (generation prompt) tokens.
    assert requests[0].prompt_tokens == 18 and len(requests[0].block_hashes) == 4
    assert requests[1].short_tokens is None and requests[1].output_tokens == 4
    short = next(sim_requests(trace[1:], SyntheticTokenizer(), PromptHasher(16)))
    assert short.block_hashes == [] and short.short_tokens is not None
    assert len(short.short_tokens) == short.prompt_tokens == 15
    with pytest.raises(ValueError, match="sorted"):
        list(sim_requests(trace[::-1], SyntheticTokenizer(), PromptHasher(4)))
