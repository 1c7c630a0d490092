"""kvbench's transformers part on the real default model: KV bytes, cache reuse, the chat."""

from __future__ import annotations

from typing import Any

import pytest

from bench.kv_conversation import KVBENCH_SEED, SYSTEM_PROMPT, make_conversation
from bench.kv_generate import ChatTokens, ModeResult, ModeSpec, load_model, run_mode
from bench.kv_size import KVShape, cache_bytes, kv_shape

pytest.importorskip("torch")
pytest.importorskip("transformers")

TURNS, NEW_TOKENS = 2, 4


@pytest.fixture(scope="module")
def default_model() -> tuple[str, Any, Any]:
    from serving.models.default import ensure_default_model

    path = str(ensure_default_model())
    model, tokenizer = load_model(path, "float32")
    return path, model, tokenizer


@pytest.fixture(scope="module")
def both_modes(default_model: tuple[str, Any, Any]) -> dict[bool, ModeResult]:
    path, model, tokenizer = default_model
    # One thread: on a shared 2-core machine a second torch thread mostly waits.
    return {use_cache: run_mode(ModeSpec(model=path, use_cache=use_cache, turns=TURNS,
                                         new_tokens=NEW_TOKENS, threads=1),
                                model=model, tokenizer=tokenizer)
            for use_cache in (True, False)}


def test_kv_shape_of_the_default_model_follows_its_config(
        default_model: tuple[str, Any, Any]) -> None:
    _, model, _ = default_model
    shape = kv_shape(model.config, dtype_bytes=4)
    # SmolLM2-135M: 30 layers, 3 KV heads (grouped-query attention), head_dim 576 / 9.
    assert shape == KVShape(num_layers=30, num_kv_heads=3, head_dim=64, dtype_bytes=4)
    assert shape.bytes_per_token == 2 * 30 * 3 * 64 * 4 == 46_080


def test_head_dim_falls_back_to_hidden_size_over_heads() -> None:
    class Config:
        num_hidden_layers, num_attention_heads, hidden_size = 4, 8, 256
        num_key_value_heads = None  # plain multi-head attention

    assert kv_shape(Config(), dtype_bytes=2) == KVShape(num_layers=4, num_kv_heads=8,
                                                        head_dim=32, dtype_bytes=2)


def test_cache_bytes_equal_the_formula_every_turn(both_modes: dict[bool, ModeResult]) -> None:
    result = both_modes[True]
    assert [r.turn for r in result.records] == [1, 2]
    for r in result.records:
        assert r.kv_cache_bytes == r.kv_formula_bytes == 46_080 * r.kv_cache_tokens
        # Everything but the last sampled token, which is fed at the next turn.
        assert r.kv_cache_tokens == r.context_tokens + NEW_TOKENS - 1
    first, second = result.records
    assert second.kv_cache_bytes > first.kv_cache_bytes
    # With the cache, turn 2 prefills only its own tokens plus turn 1's last token.
    assert second.prefill_tokens == second.context_tokens - first.kv_cache_tokens


def test_without_the_cache_nothing_is_kept_and_the_whole_history_is_prefilled(
        both_modes: dict[bool, ModeResult]) -> None:
    for r in both_modes[False].records:
        assert r.kv_cache_bytes == r.kv_cache_tokens == r.kv_formula_bytes == 0
        assert r.prefill_tokens == r.context_tokens


def test_cache_on_and_off_generate_the_same_greedy_text(
        both_modes: dict[bool, ModeResult]) -> None:
    on, off = both_modes[True].records, both_modes[False].records
    assert [r.text for r in on] == [r.text for r in off]
    assert all(r.text.strip() for r in on)
    assert [r.context_tokens for r in on] == [r.context_tokens for r in off]
    assert all(r.generated_tokens == NEW_TOKENS for r in on + off)


def test_timings_and_memory_are_recorded(both_modes: dict[bool, ModeResult]) -> None:
    for result in both_modes.values():
        for r in result.records:
            assert 0 < r.ttft_s <= r.turn_s and r.tpot_s > 0
            assert r.peak_rss_bytes >= r.peak_rss_growth_bytes >= 0 and r.rss_bytes > 0
        assert result.meta["dtype"] == "float32" and result.meta["torch_threads"] == 1
        assert {"peak_rss_reset", "peak_rss_load_bytes", "rss_after_load_bytes"} <= set(result.meta)


def test_cache_bytes_counts_keys_and_values_of_every_layer() -> None:
    torch = pytest.importorskip("torch")
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(3):
        k = torch.zeros(1, 2, 5, 8, dtype=torch.bfloat16)
        cache.update(k, k.clone(), layer)
    assert cache_bytes(cache) == 2 * 3 * 2 * 5 * 8 * 2


def test_chat_tokens_extend_the_history_and_match_the_template(
        default_model: tuple[str, Any, Any]) -> None:
    _, _, tokenizer = default_model
    chat = ChatTokens(tokenizer, SYSTEM_PROMPT)
    first = chat.add_user_turn("Hello there?")
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "Hello there?"}]
    assert first == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                       tokenize=True, return_dict=False))
    reply = tokenizer("Fine, thanks.", add_special_tokens=False)["input_ids"]
    chat.add_reply(reply)
    second = chat.add_user_turn("And you?")
    assert chat.ids == first + reply + second
    messages += [{"role": "assistant", "content": "Fine, thanks."},
                 {"role": "user", "content": "And you?"}]
    assert chat.ids == list(tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_the_conversation_is_seeded() -> None:
    a, b = make_conversation(10), make_conversation(10, seed=KVBENCH_SEED)
    assert a == b and len(a.user_turns) == 10 and len(set(a.user_turns)) == 10
    assert make_conversation(10, seed=KVBENCH_SEED + 1) != a
    assert make_conversation(3).user_turns == a.user_turns[:3]
    long = make_conversation(45)
    assert len(long.user_turns) == len(set(long.user_turns)) == 45
    with pytest.raises(ValueError):
        make_conversation(0)
