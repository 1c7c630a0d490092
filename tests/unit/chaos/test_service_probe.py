"""Readiness and failover counters read from the service, over a fake transport."""

from __future__ import annotations

import httpx

from chaos.service_probe import counter_deltas, parse_failover_counters, read_ready

METRICS = """\
# HELP cacheroute_failover_retries_total Requests retried on another replica.
# TYPE cacheroute_failover_retries_total counter
cacheroute_failover_retries_total{reason="replica_died"} 3.0
cacheroute_failover_retries_total{reason="timeout"} 2.0
# HELP cacheroute_failover_resumed_streams_total Streams resumed.
# TYPE cacheroute_failover_resumed_streams_total counter
cacheroute_failover_resumed_streams_total 1.0
# HELP other_total Something else.
# TYPE other_total counter
other_total 9.0
"""


def test_counters_are_summed_over_labels() -> None:
    assert parse_failover_counters(METRICS) == {"retried": 5.0, "resumed_streams": 1.0}


def test_no_failover_counters_reads_none() -> None:
    assert parse_failover_counters("# TYPE other_total counter\nother_total 1\n") is None


def test_deltas_treat_absent_as_zero_and_a_reset_as_the_new_value() -> None:
    assert counter_deltas(None, None) == {"retried": 0, "resumed_streams": 0,
                                          "failover_failed": 0}
    assert counter_deltas({"retried": 4}, {"retried": 6, "resumed_streams": 1})["retried"] == 2
    assert counter_deltas({"retried": 10}, {"retried": 3})["retried"] == 3


def test_ready_reads_status_and_count() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"status": "starting", "replicas_ready": 1})

    with httpx.Client(base_url="http://t", transport=httpx.MockTransport(handler)) as c:
        state = read_ready(c)
    assert (state.status, state.replicas_ready, state.ready) == (503, 1, False)


def test_no_answer_is_not_ready() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with httpx.Client(base_url="http://t", transport=httpx.MockTransport(handler)) as c:
        assert read_ready(c).status is None
