"""bench.live without a service: the policies offered, the workload choice and its trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.live import (
    POLICIES,
    build_parser,
    build_trace,
    main,
    resolve_requests,
    resolve_workload,
)
from bench.report import workload_description
from bench.trace import save_trace


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def test_every_policy_is_offered_including_the_random_baseline() -> None:
    from serving.config import POLICIES as SERVICE_POLICIES

    assert set(POLICIES) == set(SERVICE_POLICIES) and "random" in POLICIES
    assert parse().policies == list(POLICIES)
    with pytest.raises(SystemExit):
        parse("--policies", "round-robin")


@pytest.mark.parametrize(("argv", "sessions", "count"), [
    (("--workload", "tenants", "--requests", "12"), False, 12),
    (("--workload", "sessions", "--sessions", "3", "--turns", "4"), True, 12),
    (("--workload", "documents", "--documents", "2", "--requests", "9",
      "--document-words", "30"), False, 9),
])
def test_each_workload_builds_its_trace(argv: tuple[str, ...], sessions: bool,
                                        count: int) -> None:
    args = parse(*argv, "--rate", "1")
    trace = build_trace(resolve_workload(args), args)
    assert len(trace) == count
    assert all((r.session is not None) == sessions for r in trace)
    assert build_trace(resolve_workload(args), args) == trace  # seeded


def test_per_tenant_sets_the_request_count_and_sends_each_tenant_that_many() -> None:
    args = parse("--tenants", "4", "--per-tenant", "3", "--rate", "1")
    resolve_requests(args, "tenants")
    assert args.requests == 12
    trace = build_trace("tenants", args)
    assert sorted(r.tenant for r in trace) == sorted(f"t0{i}" for i in range(4) for _ in "abc")
    assert workload_description("tenants", args, 12)["per_tenant"] == 3
    consistent = parse("--tenants", "4", "--per-tenant", "3", "--requests", "12")
    resolve_requests(consistent, "tenants")
    assert consistent.requests == 12
    plain = parse()
    resolve_requests(plain, "tenants")
    assert plain.requests == 200


@pytest.mark.parametrize(("argv", "message"), [
    (("--tenants", "4", "--per-tenant", "3", "--requests", "10"), "must be --tenants x"),
    (("--per-tenant", "3", "--zipf", "1.1"), "replaces --zipf"),
    (("--per-tenant", "0"), "must be >= 1"),
    (("--workload", "documents", "--per-tenant", "3"), "goes with --workload tenants"),
])
def test_contradictory_per_tenant_options_end_with_a_one_line_error(
        argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    assert main([*argv, "--dry-run", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_trace_file_implies_the_trace_workload(tmp_path: Path) -> None:
    args = parse("--workload", "sessions", "--sessions", "2", "--turns", "2")
    path = tmp_path / "t.jsonl"
    save_trace(path, build_trace("sessions", args))
    replayed = parse("--trace", str(path))
    assert resolve_workload(replayed) == "trace"
    assert build_trace("trace", replayed) == build_trace("sessions", args)
    with pytest.raises(ValueError, match="--trace"):
        resolve_workload(parse("--workload", "trace"))


