"""The router's block hashes equal a real vLLM engine's, as published in its KV events.

A real CPU engine (the tiny model: its weights do not matter, its blocks do) runs
with the settings the service uses (sha256_cbor, a fixed PYTHONHASHSEED, ZMQ KV
events) in a child process; this test subscribes with the router's own subscriber
and compares every BlockStored hash with `PrefixHasher` on the same token ids.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from router import AppliedEvents, CacheAwarePolicy, PolicyConfig, PrefixHasher, RouteRequest
from router.hashing import to_block_hash
from router.kv_events import BlockStored, KVEventBatch
from serving.routing.kv_events import KVEventSubscriber
from tests.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration

SEED = "1234"
BLOCK = 128

ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from vllm import LLM, SamplingParams
    from vllm.config import KVEventsConfig

    def main():
        model, port, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        llm = LLM(model=model, enable_prefix_caching=True, prefix_caching_hash_algo="sha256_cbor",
                  block_size=128, max_model_len=2048, dtype="bfloat16",
                  kv_events_config=KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                                                  endpoint=f"tcp://*:{port}", topic=""))
        print("ENGINE-READY", flush=True)
        sys.stdin.readline()  # wait until the test's subscriber is connected
        params = SamplingParams(max_tokens=1, temperature=0)
        for item in prompts:
            llm.generate([{"prompt_token_ids": item["ids"]}], params, use_tqdm=False)
        time.sleep(2)  # let the publisher flush
        print("ENGINE-DONE", flush=True)

    if __name__ == "__main__":
        main()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_block_stored_hashes_equal_prefix_hasher(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    port = free_port()
    prompts = [
        {"ids": [(7 * i) % 500 + 3 for i in range(3 * BLOCK + 17)]},  # 3 full blocks
        {"ids": [(7 * i) % 500 + 3 for i in range(2 * BLOCK)] + [9] * (BLOCK + 5)},  # shares 2
    ]
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": SEED, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(model), str(port),
                             json.dumps(prompts)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    batches: list[KVEventBatch] = []
    lock = threading.Lock()

    def on_batch(batch: KVEventBatch) -> None:
        with lock:
            batches.append(batch)

    output: list[str] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("ENGINE-READY"):
                break
        else:
            pytest.fail("engine did not start:\n" + "".join(output[-40:]))
        with KVEventSubscriber(f"tcp://127.0.0.1:{port}", on_batch):
            time.sleep(1.0)  # ZMQ slow joiner: let SUB connect before events flow
            proc.stdin.write("go\n")
            proc.stdin.flush()
            for line in proc.stdout:
                output.append(line)
                if line.startswith("ENGINE-DONE"):
                    break
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(timeout=60)

    stored = [ev for b in batches for ev in b.events if isinstance(ev, BlockStored)]
    engine_hashes = [to_block_hash(h) for ev in stored for h in ev.block_hashes]
    assert engine_hashes, "no BlockStored events received:\n" + "".join(output[-20:])

    hasher = PrefixHasher(BLOCK, SEED)
    expected_first = hasher.block_hashes(prompts[0]["ids"])
    expected_second = hasher.block_hashes(prompts[1]["ids"])
    assert len(expected_first) == 3 and len(expected_second) == 3
    # The first prompt stores its 3 blocks; the second reuses 2 and stores 1 new one.
    assert engine_hashes[:3] == expected_first
    assert expected_second[:2] == expected_first[:2]
    assert expected_second[2] in engine_hashes
    assert set(engine_hashes) <= set(expected_first) | set(expected_second)

    # And the policy, fed those events, routes the second prompt to their owner.
    policy = CacheAwarePolicy(PolicyConfig(block_size=BLOCK, hash_seed=SEED),
                              replicas=["a", "b", "c"])
    applied = [policy.on_kv_events("b", batch) for batch in batches]
    assert sum(a.stored_blocks for a in applied if isinstance(a, AppliedEvents)) >= 4
    decision = policy.select(RouteRequest(token_ids=tuple(prompts[1]["ids"])), {})
    assert decision.replica_id == "b" and decision.matched_blocks == 3
