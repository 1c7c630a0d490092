"""Faults on fake processes and a fake scaler: who is hit, how, and when it counts as recovered."""

from __future__ import annotations

import signal

import pytest

from chaos.cluster import INGRESS_DEPLOYMENT, ClusterError
from chaos.faults import (
    CrashMidStream,
    FaultContext,
    HangReplica,
    KillReplica,
    RestartIngress,
    choose_victim,
    make_fault,
)
from tests.unit.chaos.chaos_fakes import FakeScaler, FakeSignals, make_replica, make_sample

LLM = "LLMServer:m"


def ctx_for(replicas, *, ingress=None, in_flight=None, signals=None, scaler=None):
    return FaultContext(scaler=scaler or FakeScaler(), llm_deployment=LLM,
                        replicas_before=replicas,
                        ingress_before=ingress or [make_replica("i1", deployment=INGRESS_DEPLOYMENT,
                                                                pid=50)],
                        seed=0, clock=lambda: 10.0, in_flight=lambda: in_flight or {},
                        send_signal=signals or FakeSignals(),
                        find_engine=lambda pid: pid + 1)


REPLICAS = [make_replica("a", pid=100), make_replica("b", pid=200), make_replica("c", pid=300)]


def test_victim_choice_is_seeded_and_order_free() -> None:
    first = choose_victim(REPLICAS, 7)
    assert choose_victim(list(reversed(REPLICAS)), 7) == first
    assert {choose_victim(REPLICAS, s).replica_id for s in range(30)} == {"a", "b", "c"}


def test_victim_is_the_busiest_when_counts_are_given() -> None:
    assert choose_victim(REPLICAS, 0, {"a": 1, "b": 4, "c": 2}).replica_id == "b"


def test_no_candidate_is_an_error() -> None:
    with pytest.raises(ClusterError):
        choose_victim([], 0)


def test_kill_replica_sigkills_the_engine_core_by_default() -> None:
    signals = FakeSignals()
    fault = KillReplica()
    details = fault.inject(ctx_for(REPLICAS, signals=signals))
    victim = next(r for r in REPLICAS if r.replica_id == details["victim"])
    assert signals.sent == [(victim.pid + 1, signal.SIGKILL)]


def test_kill_replica_actor_target_kills_the_worker() -> None:
    signals = FakeSignals()
    details = KillReplica(target="actor").inject(ctx_for(REPLICAS, signals=signals))
    victim = next(r for r in REPLICAS if r.replica_id == details["victim"])
    assert signals.sent == [(victim.pid, signal.SIGKILL)]


def test_kill_recovers_when_the_victim_is_replaced_and_ready() -> None:
    ctx = ctx_for(REPLICAS)
    fault = KillReplica()
    victim = fault.inject(ctx)["victim"]
    others = [r for r in REPLICAS if r.replica_id != victim]
    assert not fault.recovered(make_sample(11, REPLICAS), ctx)  # not noticed yet
    assert not fault.recovered(make_sample(12, others), ctx)  # one short
    replaced = [*others, make_replica("new")]
    assert not fault.recovered(make_sample(13, [*others, make_replica("new", state="STARTING")]),
                               ctx)
    assert not fault.recovered(make_sample(14, replaced, ready=503), ctx)
    assert fault.recovered(make_sample(15, replaced), ctx)


def test_crash_mid_stream_waits_for_streams_and_hits_the_busiest() -> None:
    fault = CrashMidStream(min_streams=2)
    assert not fault.ready_to_inject(in_flight_streams=1)
    assert fault.ready_to_inject(in_flight_streams=2)
    details = fault.inject(ctx_for(REPLICAS, in_flight={"c": 3, "a": 1}))
    assert details["victim"] == "c"


def test_hang_stops_then_resumes_once() -> None:
    signals = FakeSignals()
    ctx = ctx_for(REPLICAS, signals=signals)
    fault = HangReplica(hang_s=3600)
    fault.inject(ctx)
    pid = signals.sent[0][0]
    assert signals.sent == [(pid, signal.SIGSTOP)]
    assert not fault.recovered(make_sample(20, REPLICAS), ctx)  # still stopped
    fault.end(ctx)
    fault.end(ctx)
    assert signals.sent == [(pid, signal.SIGSTOP), (pid, signal.SIGCONT)]
    assert ctx.details["resumed_at_s"] == 10.0
    assert fault.recovered(make_sample(20, REPLICAS), ctx)


def test_restart_ingress_kills_the_ingress_and_waits_for_a_new_one() -> None:
    signals = FakeSignals()
    ctx = ctx_for(REPLICAS, signals=signals)
    fault = RestartIngress()
    fault.inject(ctx)
    assert signals.sent == [(50, signal.SIGKILL)]
    old = make_replica("i1", deployment=INGRESS_DEPLOYMENT)
    new = make_replica("i2", deployment=INGRESS_DEPLOYMENT)
    assert not fault.recovered(make_sample(11, [*REPLICAS, old]), ctx)
    assert fault.recovered(make_sample(12, [*REPLICAS, new]), ctx)


@pytest.mark.parametrize(("name", "target"), [("scale-down", 2), ("scale-up", 4)])
def test_scale_sets_the_count_and_restores_it(name: str, target: int) -> None:
    scaler = FakeScaler()
    ctx = ctx_for(REPLICAS, scaler=scaler)
    fault = make_fault(name)
    assert fault.inject(ctx) == {"from_replicas": 3, "to_replicas": target}
    assert not fault.recovered(make_sample(11, REPLICAS), ctx)
    shaped = [make_replica(f"r{i}") for i in range(target)]
    assert fault.recovered(make_sample(12, shaped, ready=503), ctx)  # /ready not asked
    assert fault.end(ctx) == 3
    assert scaler.calls == [(LLM, target), (LLM, 3)]


def test_scale_without_restore_leaves_the_count() -> None:
    scaler = FakeScaler()
    ctx = ctx_for(REPLICAS, scaler=scaler)
    fault = make_fault("scale-up", restore=False)
    fault.inject(ctx)
    assert fault.end(ctx) is None and scaler.calls == [(LLM, 4)]


def test_scale_down_from_one_is_refused() -> None:
    with pytest.raises(ClusterError):
        make_fault("scale-down").inject(ctx_for(REPLICAS[:1]))


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError):
        make_fault("unplug")
    with pytest.raises(ValueError):
        KillReplica(target="gpu")
