"""Segment-wise cached encoding gives exactly the tokenizer's own ids."""

from __future__ import annotations

import random
from array import array
from pathlib import Path

import pytest

from serving.models.default import default_model_path
from serving.routing.prompt_tokens import load_tokenizer
from serving.routing.segment_tokens import SegmentEncoder
from tests.tiny_model import build_tiny_model

WORDS = ("policy", "tenant", " ", "\n", "  ", "Rule", "42", "é", "日本", "cite", "!", "'s",
         "\t", "answer", "x" * 40)


def random_text(rng: random.Random, specials: list[str]) -> str:
    parts = []
    for _ in range(rng.randint(1, 60)):
        if specials and rng.random() < 0.15:
            parts.append(rng.choice(specials))
        else:
            parts.append(rng.choice(WORDS) * rng.randint(1, 30))
    return "".join(parts)


def tokenizers() -> list[Path]:
    out = []
    default = default_model_path()
    if (default / "tokenizer.json").is_file():
        out.append(default)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def check_equivalent(path: Path) -> SegmentEncoder:
    tok = load_tokenizer(str(path))
    enc = SegmentEncoder(tok)
    assert enc.enabled
    specials = [str(t.content) for t in tok.added_tokens_decoder.values()]
    rng = random.Random(0)
    system = random_text(rng, []) * 5
    for _ in range(300):
        text = random_text(rng, specials)
        if rng.random() < 0.5:  # a repeated long piece between special tokens
            text = f"{specials[0]}system\n{system}{specials[-1]}" + text
        want = list(tok.encode(text, add_special_tokens=False))
        assert enc.encode(text) == want, text
        packed = enc.encode_packed(text)
        assert packed.typecode == "I" and packed.tolist() == want, text
    assert enc.hits > 0
    return enc


def test_tiny_tokenizer(tiny: Path) -> None:
    check_equivalent(tiny)


@pytest.mark.parametrize("path", tokenizers(), ids=lambda p: p.name)
def test_default_model_tokenizer(path: Path) -> None:
    enc = check_equivalent(path)
    tok = load_tokenizer(str(path))
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief. " * 200}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True)
    assert enc.encode(chat) == list(tok.encode(chat, add_special_tokens=False))


def test_disabled_for_tokenizers_that_add_specials() -> None:
    class AddsBos:
        added_tokens_decoder: dict = {}

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    enc = SegmentEncoder(AddsBos())
    assert not enc.enabled
    assert enc.encode("ab", add_special_tokens=True) == [1, 97, 98]
    assert enc.encode_packed("ab", add_special_tokens=True).tolist() == [1, 97, 98]


def test_cache_admits_on_second_sighting_and_is_bounded_by_tokens(tiny: Path) -> None:
    tok = load_tokenizer(str(tiny))
    enc = SegmentEncoder(tok, max_tokens=2_000)
    special = str(next(iter(tok.added_tokens_decoder.values())).content)
    long_piece = "tenant policy text " * 40
    for _ in range(3):
        assert enc.encode(special + long_piece) == list(tok.encode(special + long_piece,
                                                                   add_special_tokens=False))
    assert (enc.misses, enc.hits) == (2, 1)  # seen, admitted, then served
    for i in range(50):  # one-off pieces never evict it
        enc.encode(special + f"user question number {i} " * 20)
    enc.encode(special + long_piece)
    assert enc.hits == 2
    for i in range(40):  # repeated pieces beyond the budget evict the oldest
        piece = special + f"other tenant {i} " * 60
        enc.encode(piece)
        enc.encode(piece)
    assert enc._cached_tokens <= 2_000


def test_prompt_tokenizer_packs_text_and_keeps_client_ids(tiny: Path) -> None:
    from types import SimpleNamespace

    from serving.routing.prompt_tokens import PromptTokenizer

    prompts = PromptTokenizer(str(tiny))
    text = SimpleNamespace(prompt="tenant policy text " * 30, add_special_tokens=False)
    packed = prompts.packed_ids(text)
    assert isinstance(packed, array) and packed.typecode == "I"
    assert prompts.token_ids(text) == tuple(packed) == tuple(
        load_tokenizer(str(tiny)).encode(text.prompt, add_special_tokens=False))
    chat = SimpleNamespace(messages=[{"role": "user", "content": "hello " * 50}])
    assert prompts.token_ids(chat) == tuple(prompts.packed_ids(chat))
    # Ids a client sent stay a tuple: they need not fit in 32 bits.
    ids = SimpleNamespace(prompt=[5, 2**40, 7])
    assert prompts.packed_ids(ids) == prompts.token_ids(ids) == (5, 2**40, 7)
    assert prompts.packed_ids(SimpleNamespace(prompt=["a", "b"])) is None


def test_a_piece_is_cached_per_salt_so_no_tenant_times_anothers(tiny: Path) -> None:
    tok = load_tokenizer(str(tiny))
    enc = SegmentEncoder(tok)
    special = str(next(iter(tok.added_tokens_decoder.values())).content)
    text = special + "acme's confidential system prompt " * 20
    expected = list(tok.encode(text, add_special_tokens=False))
    for _ in range(3):
        assert enc.encode(text, salt="acme") == expected
    assert (enc.misses, enc.hits) == (2, 1)
    # globex sending the same text finds nothing cached: a miss, as for a new text.
    assert enc.encode_packed(text, salt="globex").tolist() == expected
    assert enc.encode(text, salt=None) == expected
    assert (enc.misses, enc.hits) == (4, 1)
    assert enc.encode(text, salt="acme") == expected and enc.hits == 2


def test_prompt_tokenizer_caches_under_the_requests_salt(tiny: Path) -> None:
    from types import SimpleNamespace

    from serving.routing.prompt_tokens import PromptTokenizer

    prompts = PromptTokenizer(str(tiny))
    special = str(next(iter(load_tokenizer(str(tiny)).added_tokens_decoder.values())).content)
    prompt = special + "tenant policy text " * 30
    for _ in range(2):
        prompts.packed_ids(SimpleNamespace(prompt=prompt, cache_salt="acme"))
    encoder = prompts._encoder
    assert encoder is not None and encoder.hits == 0
    prompts.packed_ids(SimpleNamespace(prompt=prompt, cache_salt="globex"))
    assert encoder.hits == 0
    prompts.packed_ids(SimpleNamespace(prompt=prompt, cache_salt="acme"))
    assert encoder.hits == 1
