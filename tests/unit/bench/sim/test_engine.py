"""SimEngine: step times from uncached tokens, FCFS queueing, chunked prefill, KV size."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.sim.engine import EngineParams, SimEngine, kv_capacity_blocks
from tests.unit.bench.sim.sim_factories import make_engine_params, make_request


def run_until_idle(engine: SimEngine, now: float = 0.0) -> list[tuple[str, int, float]]:
    """Drive ``engine`` step by step: ``(event, request index, time)`` in order."""
    events = []
    end = engine.kick(now)
    while end is not None:
        first, done = engine.step_end()
        events += [("first", seq.request.index, end) for seq in first]
        events += [("done", seq.request.index, end) for seq in done]
        end = engine.kick(end)
    return events


def test_prefill_time_is_proportional_to_uncached_tokens() -> None:
    engine = SimEngine(0, make_engine_params())
    engine.submit(make_request(0, blocks=(1, 2)))  # 9 tokens, none cached
    # One step: 1 s overhead + 9 tokens x 1 s.
    assert run_until_idle(engine) == [("first", 0, 10.0), ("done", 0, 10.0)]
    engine.submit(make_request(1, blocks=(1, 2)))  # 8 of 9 tokens cached
    assert run_until_idle(engine, 10.0) == [("first", 1, 12.0), ("done", 1, 12.0)]
    engine.submit(make_request(2, blocks=(1, 7)))  # only the first block cached
    assert run_until_idle(engine, 12.0) == [("first", 2, 18.0), ("done", 2, 18.0)]


def test_requests_queue_for_a_slot_and_then_hit_the_blocks_of_those_before() -> None:
    engine = SimEngine(0, make_engine_params(max_num_seqs=1))
    engine.submit(make_request(0, blocks=(1, 2)))
    engine.submit(make_request(1, blocks=(1, 2)))
    assert run_until_idle(engine) == [
        ("first", 0, 10.0), ("done", 0, 10.0),
        ("first", 1, 12.0), ("done", 1, 12.0),  # waited 10 s, then a 1-token prefill
    ]


def test_admitted_together_the_second_hits_blocks_cached_at_allocation() -> None:
    # vLLM v1 caches blocks when it allocates them, so both share one step.
    engine = SimEngine(0, make_engine_params())
    engine.submit(make_request(0, blocks=(1, 2)))
    engine.submit(make_request(1, blocks=(1, 2)))
    assert run_until_idle(engine) == [
        ("first", 0, 11.0), ("first", 1, 11.0), ("done", 0, 11.0), ("done", 1, 11.0)]


def test_chunked_prefill_and_decode_share_steps() -> None:
    engine = SimEngine(0, make_engine_params(max_num_batched_tokens=5, decode_s_per_seq=0.5))
    engine.submit(make_request(0, blocks=(1, 2), output_tokens=3))
    # Steps: 5 prompt tokens (6 s), 4 more (5 s), then two decode steps of 1.5 s.
    assert run_until_idle(engine) == [("first", 0, 11.0), ("done", 0, 14.0)]


def test_a_request_that_cannot_fit_waits_for_blocks_fcfs() -> None:
    # 3 blocks in all; a request pins 3 (9 prompt + 1 output token), so one runs at a time.
    engine = SimEngine(0, make_engine_params(kv_capacity_blocks=3))
    engine.submit(make_request(0, blocks=(1, 2)))
    engine.submit(make_request(1, blocks=(3, 4)))
    assert run_until_idle(engine) == [
        ("first", 0, 10.0), ("done", 0, 10.0), ("first", 1, 20.0), ("done", 1, 20.0)]
    with pytest.raises(ValueError, match="KV blocks"):
        engine.submit(make_request(2, blocks=(5, 6, 7)))


def test_kv_capacity_of_the_live_benchmark() -> None:
    # 2 x 30 layers x 3 KV heads x 64 x 2 bytes x 128 tokens = 2,949,120 bytes a block.
    assert kv_capacity_blocks(2**30, block_size=128) == 364
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 8, "hidden_size": 32}
    assert kv_capacity_blocks(2 * 2 * 2 * 8 * 2 * 16 * 10, config, block_size=16) == 10


def test_default_model_config_gives_the_same_capacity() -> None:
    path = Path.home() / ".cache/cacheroute/models/smollm2-135m-instruct/config.json"
    if not path.exists():
        pytest.skip("default model not built on this machine")
    assert kv_capacity_blocks(2**30, path, block_size=128) == 364


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        EngineParams(prefill_s_per_token=-1.0)
    with pytest.raises(ValueError):
        EngineParams(max_num_seqs=0)
