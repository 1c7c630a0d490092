"""bench.workloads, bench.trace and bench.oracle: pure, fast, no tokenizer or server."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from bench.oracle import oracle_hits
from bench.trace import (
    TraceFormatError,
    TraceRequest,
    dumps_trace,
    load_trace,
    save_trace,
)
from bench.workloads import (
    WorkloadSpec,
    arrival_times,
    generate,
    make_tenants,
    zipf_weights,
)


def make_spec(**overrides: object) -> WorkloadSpec:
    fields: dict[str, object] = {"tenants": 6, "requests": 300, "zipf_s": 1.2, "seed": 7,
                                 "rate_rps": 4.0, "system_prompt_words": 60}
    fields.update(overrides)
    return WorkloadSpec(**fields)  # type: ignore[arg-type]


# --- workload generator -------------------------------------------------------------


def test_same_seed_gives_identical_requests() -> None:
    assert generate(make_spec()) == generate(make_spec())
    assert dumps_trace(generate(make_spec())) == dumps_trace(generate(make_spec()))


def test_other_seed_gives_other_requests() -> None:
    assert generate(make_spec(seed=7)) != generate(make_spec(seed=8))


def test_tenant_prompts_do_not_depend_on_request_count_or_tenant_count() -> None:
    small = make_tenants(make_spec(tenants=3, requests=10))
    large = make_tenants(make_spec(tenants=6, requests=300))
    assert small == large[:3]


def test_tenant_prompts_differ_from_their_first_words() -> None:
    tenants = make_tenants(make_spec(tenants=12))
    assert len({t.company for t in tenants}) == 12
    first_words = {t.system_prompt.split()[0] for t in tenants}
    assert len(first_words) == 12
    for t in tenants:
        assert t.system_prompt.startswith(t.company)


def test_zipf_skew_orders_tenants_by_popularity() -> None:
    counts = Counter(r.tenant for r in generate(make_spec(requests=3000)))
    ranked = [name for name, _ in counts.most_common()]
    assert ranked[0] == "t00"
    assert counts["t00"] > 2 * counts["t02"]
    assert counts["t00"] > counts["t01"] > counts["t05"]


def test_zipf_weights_are_normalised_and_uniform_at_zero() -> None:
    assert sum(zipf_weights(5, 1.1)) == pytest.approx(1.0)
    assert zipf_weights(4, 0.0) == [0.25] * 4
    weights = zipf_weights(3, 1.0)
    assert weights[0] / weights[1] == pytest.approx(2.0)


def test_requests_share_the_tenant_system_prompt_and_have_distinct_questions() -> None:
    spec = make_spec()
    prompts = {t.name: t.system_prompt for t in make_tenants(spec)}
    requests = generate(spec)
    assert all(r.messages is not None for r in requests)
    for r in requests:
        assert r.messages is not None and r.tenant is not None
        assert r.messages[0] == {"role": "system", "content": prompts[r.tenant]}
        assert r.messages[1]["role"] == "user"
        assert r.max_tokens == spec.max_tokens
    questions = [r.messages[1]["content"] for r in requests if r.messages is not None]
    assert len(set(questions)) == len(questions)


def test_poisson_arrivals_start_at_zero_increase_and_match_the_rate() -> None:
    times = arrival_times(4000, 5.0, seed=1)
    assert times[0] == 0.0
    assert all(b >= a for a, b in pairwise(times))
    assert times[-1] / (len(times) - 1) == pytest.approx(1 / 5.0, rel=0.1)
    assert arrival_times(3, None, seed=1) == [0.0, 0.0, 0.0]


def test_per_tenant_gives_every_tenant_exactly_that_many_requests_in_a_seeded_order() -> None:
    spec = make_spec(tenants=8, requests=24, per_tenant=3)
    requests = generate(spec)
    assert Counter(r.tenant for r in requests) == {f"t{i:02d}": 3 for i in range(8)}
    order = [r.tenant for r in requests]
    assert order == [r.tenant for r in generate(spec)]
    assert order != sorted(order)  # shuffled, not tenant by tenant
    assert order != [r.tenant for r in generate(make_spec(tenants=8, requests=24,
                                                          per_tenant=3, seed=8))]
    # The same prompts, questions and arrival times as Zipf picks of the same seed.
    zipf = generate(make_spec(tenants=8, requests=24))
    assert [r.t for r in requests] == [r.t for r in zipf]
    assert [r.messages[1] for r in requests] == [r.messages[1] for r in zipf]  # type: ignore[index]


@pytest.mark.parametrize("bad", [{"tenants": 0}, {"zipf_s": -1.0}, {"rate_rps": 0.0},
                                 {"max_tokens": 0}, {"requests": -1},
                                 {"tenants": 2, "requests": 4, "per_tenant": 0},
                                 {"tenants": 2, "requests": 5, "per_tenant": 2}])
def test_invalid_specs_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_spec(**bad)


# --- trace format ------------------------------------------------------------------


def test_trace_jsonl_round_trip(tmp_path: Path) -> None:
    requests = generate(make_spec(requests=25)) + [
        TraceRequest(t=9.5, max_tokens=4, prompt="Once upon a time", session="s-1"),
    ]
    path = tmp_path / "trace.jsonl"
    save_trace(path, requests)
    assert load_trace(path) == requests
    lines = path.read_text().splitlines()
    assert len(lines) == len(requests)
    assert json.loads(lines[-1]) == {"t": 9.5, "session": "s-1", "tenant": None,
                                     "max_tokens": 4, "prompt": "Once upon a time"}


def test_trace_loader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"t": 0, "max_tokens": 8, "prompt": "hi"})
    path.write_text(good + "\n\n" + json.dumps({"t": 1, "max_tokens": 8}) + "\n")
    with pytest.raises(TraceFormatError, match=r"bad\.jsonl:3: exactly one of messages"):
        load_trace(path)


@pytest.mark.parametrize("line", [
    {"t": -1, "max_tokens": 8, "prompt": "x"},
    {"t": 0, "max_tokens": 0, "prompt": "x"},
    {"t": 0, "max_tokens": 8, "prompt": "x", "messages": [{"role": "user", "content": "y"}]},
    {"t": 0, "max_tokens": 8, "messages": [{"role": "user"}]},
    {"t": 0, "max_tokens": 8, "prompt": "x", "extra": 1},
    {"max_tokens": 8, "prompt": "x"},
])
def test_invalid_trace_lines_are_rejected(tmp_path: Path, line: dict[str, object]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(TraceFormatError, match=r":1: "):
        load_trace(path)


# --- oracle hit rate ---------------------------------------------------------------


def test_oracle_hit_rate_on_a_hand_made_trace() -> None:
    # Block size 4. Expected cached tokens per request, by the rules in bench/oracle.py:
    first = list(range(1, 11))                      # 10 tokens, nothing seen yet: 0
    extends = list(range(1, 9)) + [99]              # blocks [1-4],[5-8] seen: 8
    aligned_repeat = list(range(1, 9))              # only blocks within the first 7 tokens: 4
    diverges = [1, 2, 3, 4, 50, 6, 7, 8, 9, 10, 11, 12, 13]  # [1-4] seen, then differs: 4
    same_block_other_chain = [5, 6, 7, 8, 9]        # [5-8] seen only after [1-4]: 0
    result = oracle_hits([first, extends, aligned_repeat, diverges, same_block_other_chain],
                         block_size=4)
    assert result.per_request == (0, 8, 4, 4, 0)
    assert result.cached_tokens == 16
    assert result.prompt_tokens == 10 + 9 + 8 + 13 + 5
    assert result.hit_rate == pytest.approx(16 / 45)


def test_oracle_counts_blocks_of_every_earlier_request_not_just_the_previous() -> None:
    a, b = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
    result = oracle_hits([a, b, a + [0, 0, 0, 0], b], block_size=4)
    assert result.per_request == (0, 0, 4, 4)


def test_oracle_of_nothing_and_of_short_prompts() -> None:
    assert oracle_hits([], block_size=4).hit_rate == 0.0
    result = oracle_hits([[1, 2, 3], [1, 2, 3], []], block_size=4)
    assert result.per_request == (0, 0, 0)
    assert result.prompt_tokens == 6
