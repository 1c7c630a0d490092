"""make_* builders of real simulator objects for the tests (no mocks)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.sim.engine import EngineParams
from bench.sim.prompts import SimRequest
from router import BlockHash


def make_hashes(*values: int) -> list[BlockHash]:
    return [BlockHash(v) for v in values]


def make_request(index: int = 0, *, blocks: Sequence[int] = (1, 2), arrival_s: float = 0.0,
                 prompt_tokens: int | None = None, output_tokens: int = 1,
                 block_size: int = 4, text: str | None = None) -> SimRequest:
    """A request whose prompt is exactly ``blocks`` full blocks plus one token."""
    return SimRequest(index=index, arrival_s=arrival_s,
                      prompt_tokens=(prompt_tokens if prompt_tokens is not None
                                     else len(blocks) * block_size + 1),
                      output_tokens=output_tokens, block_hashes=make_hashes(*blocks), text=text)


def make_engine_params(**overrides: object) -> EngineParams:
    """Round numbers: 4-token blocks, 1 s a step, 1 s per prefilled token, no decode cost."""
    fields: dict[str, object] = {
        "block_size": 4, "kv_capacity_blocks": 100, "max_num_seqs": 4,
        "max_num_batched_tokens": 1000, "prefill_s_per_token": 1.0,
        "decode_s_per_seq": 0.0, "step_overhead_s": 1.0,
    }
    fields.update(overrides)
    return EngineParams(**fields)  # type: ignore[arg-type]


def make_workload(*, tenants: int = 4, requests: int = 40, rate_rps: float | None = 2.0,
                  zipf_s: float = 1.1, seed: int = 0, words: int = 60, block_size: int = 16,
                  with_text: bool = False) -> list[SimRequest]:
    """A small seeded multi-tenant workload (bench/workloads.py), synthetically tokenised."""
    from bench.sim.prompts import PromptHasher, sim_requests
    from bench.sim.tokens import SyntheticTokenizer
    from bench.workloads import WorkloadSpec, iter_requests

    spec = WorkloadSpec(tenants=tenants, requests=requests, rate_rps=rate_rps, zipf_s=zipf_s,
                        seed=seed, system_prompt_words=words)
    return list(sim_requests(iter_requests(spec), SyntheticTokenizer(),
                             PromptHasher(block_size), with_text=with_text))
