"""Contract with the installed vLLM: same block hashes, same KV-event wire format.

Skipped where vLLM is not installed; the router itself never imports it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

vllm_kv_events = pytest.importorskip("vllm.distributed.kv_events")
kv_cache_utils = pytest.importorskip("vllm.v1.core.kv_cache_utils")
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256_cbor  # noqa: E402
from vllm.v1.request import Request  # noqa: E402

from router import CacheAwarePolicy, Outcome, PolicyConfig, RouteRequest  # noqa: E402
from router import kv_events as ours  # noqa: E402
from router.hashing import PrefixHasher, engine_hash_seed  # noqa: E402


@pytest.fixture
def none_hash_seed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Re-initialise vLLM's global NONE_HASH for a given PYTHONHASHSEED, then restore."""

    def init(seed: str | None) -> str:
        if seed is None:
            monkeypatch.delenv("PYTHONHASHSEED", raising=False)
        else:
            monkeypatch.setenv("PYTHONHASHSEED", seed)
        kv_cache_utils.init_none_hash(sha256_cbor)
        return str(kv_cache_utils.get_none_hash_seed())

    yield init
    monkeypatch.undo()
    kv_cache_utils.init_none_hash(sha256_cbor)


def engine_block_hashes(
    tokens: list[int], block_size: int, *, salt: str | None, lora: LoRARequest | None
) -> list[int]:
    """Hashes as the engine computes them for a request, converted as KV events do."""
    request = Request(
        "contract",
        tokens,
        SamplingParams(max_tokens=1),
        None,
        lora_request=lora,
        cache_salt=salt,
        block_hasher=kv_cache_utils.get_request_block_hasher(block_size, sha256_cbor),
    )
    return [kv_cache_utils.maybe_convert_block_hash(h) for h in request.block_hashes]


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("salt", [None, "", "tenant-7"])
@pytest.mark.parametrize("with_lora", [False, True])
@pytest.mark.parametrize("env_seed", [None, "0", "31337"])
def test_prefix_hasher_equals_the_engines_request_hasher(
    none_hash_seed: Any, block_size: int, salt: str | None, with_lora: bool, env_seed: str | None
) -> None:
    resolved = none_hash_seed(env_seed)
    assert resolved == engine_hash_seed({} if env_seed is None else {"PYTHONHASHSEED": env_seed})
    rng = random.Random(block_size)
    tokens = [rng.randrange(150_000) for _ in range(5 * block_size + 3)]
    lora = LoRARequest("adapter", 1, "/adapters/a") if with_lora else None
    want = engine_block_hashes(tokens, block_size, salt=salt, lora=lora)
    got = PrefixHasher(block_size, resolved).block_hashes(
        tokens,
        cache_salt=salt,
        lora_name=lora.lora_name if lora else None,
        lora_path=lora.lora_path if lora else None,
    )
    assert len(want) == 5 and got == want


def test_extra_keys_and_digest_chain_match_hash_block_tokens(none_hash_seed: Any) -> None:
    none_hash_seed(None)
    tokens = list(range(40, 72))
    salt_keys = (("cache_salt", "s"),)
    parent = kv_cache_utils.hash_block_tokens(sha256_cbor, None, tokens[:16], salt_keys)
    child = kv_cache_utils.hash_block_tokens(sha256_cbor, parent, tokens[16:], None)
    # Full-precision parents: our digests are vLLM's BlockHash bytes.
    assert PrefixHasher(16).digests(tokens, cache_salt="s") == [parent, child]


def _vllm_batch() -> Any:
    return vllm_kv_events.KVEventBatch(
        ts=3.25,
        events=[
            vllm_kv_events.BlockStored(
                block_hashes=[1, 2**64 - 1],
                parent_block_hash=7,
                token_ids=list(range(32)),
                block_size=16,
                lora_id=2,
                medium="GPU",
                lora_name="adapter",
                extra_keys=[("adapter", "salt"), ("adapter",)],
                group_idx=0,
                session_id="conv",
            ),
            vllm_kv_events.BlockRemoved(block_hashes=[b"\x01" * 32], medium="GPU", group_idx=0),
            vllm_kv_events.AllBlocksCleared(),
        ],
        data_parallel_rank=1,
    )


def _as_builtins(batch: Any) -> Any:
    return msgspec.to_builtins(batch)


def test_our_structs_decode_vllm_payloads_field_for_field() -> None:
    payload = msgspec.msgpack.Encoder().encode(_vllm_batch())
    decoded = ours.decode_batch(payload)
    assert [type(e).__name__ for e in decoded.events] == [
        "BlockStored",
        "BlockRemoved",
        "AllBlocksCleared",
    ]
    # Re-encoding with our structs gives vLLM's exact bytes: the mirror is exact.
    assert msgspec.msgpack.Encoder().encode(decoded) == payload
    assert _as_builtins(decoded) == _as_builtins(_vllm_batch())


def test_vllm_decodes_our_payloads() -> None:
    payload = msgspec.msgpack.Encoder().encode(
        ours.decode_batch(msgspec.msgpack.Encoder().encode(_vllm_batch()))
    )
    theirs = msgspec.msgpack.Decoder(type=vllm_kv_events.KVEventBatch).decode(payload)
    assert theirs == _vllm_batch()


def test_struct_fields_mirror_vllms() -> None:
    for name in ("BlockStored", "BlockRemoved", "AllBlocksCleared", "KVEventBatch"):
        assert (
            getattr(ours, name).__struct_fields__
            == getattr(vllm_kv_events, name).__struct_fields__
        ), name


def test_engine_events_feed_the_policy_end_to_end(none_hash_seed: Any) -> None:
    """Hashes from an engine-built request, published as vLLM events, give an owner hit."""
    none_hash_seed(None)
    tokens = list(range(500, 564))
    hashes = engine_block_hashes(tokens, 16, salt="t", lora=None)
    batch = vllm_kv_events.KVEventBatch(
        ts=1.0,
        events=[
            vllm_kv_events.BlockStored(
                block_hashes=hashes,
                parent_block_hash=None,
                token_ids=tokens,
                block_size=16,
                lora_id=None,
                medium="GPU",
                lora_name=None,
            )
        ],
    )
    policy = CacheAwarePolicy(PolicyConfig(block_size=16), replicas=["a", "b", "c", "d"])
    home = policy.select(RouteRequest(token_ids=tuple(tokens), cache_salt="t"), {"a": 0})
    engine = next(r for r in ("a", "b", "c", "d") if r != home.replica_id)
    policy.on_replica_removed(home.replica_id)  # forget what routing learned
    policy.set_replicas(["a", "b", "c", "d"])
    policy.on_kv_events(engine, ours.decode_batch(msgspec.msgpack.encode(batch)))
    decision = policy.select(RouteRequest(token_ids=tuple(tokens), cache_salt="t"), {})
    assert (decision.replica_id, decision.outcome, decision.matched_blocks) == (
        engine,
        Outcome.OWNER_HIT,
        4,
    )
