"""The engine's KV-event endpoint: bound to the node's Ray address at a port fixed by
the replica's node-local rank, and advertised at that same address.

The node address is injected (no Ray). The contract tests run the pinned vLLM's own
publisher on loopback: it must bind, not connect, the endpoint the replica gives it,
on that one address only.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from serving.contract import KV_EVENTS_REPLAY_STATS_KEY, KV_EVENTS_STATS_KEY
from serving.replica import server
from serving.replica.kv_endpoint import (
    KV_EVENTS_BASE_PORT,
    KV_EVENTS_PORTS,
    MAX_REPLICAS_PER_NODE,
    kv_events_config,
    kv_events_endpoint,
    kv_events_port,
    node_endpoint,
    port_is_free,
)


def free(node_ip: str, port: int) -> bool:  # a node where every port is free
    return True


def test_the_endpoint_is_advertised_at_the_node_address_it_binds() -> None:
    endpoint = kv_events_endpoint("10.1.2.3", 0, free=free)
    assert endpoint.advertised == f"tcp://10.1.2.3:{KV_EVENTS_BASE_PORT}"
    assert endpoint.bind == f"tcp://[::ffff:10.1.2.3]:{KV_EVENTS_BASE_PORT}"
    assert endpoint.replay == f"tcp://10.1.2.3:{KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE}"
    for address in (endpoint.bind, endpoint.advertised, endpoint.replay):
        assert "*" not in address and "127.0.0.1" not in address


def test_vllm_gets_the_bind_endpoint() -> None:
    endpoint = kv_events_endpoint("10.1.2.3", 2, free=free)
    config = kv_events_config(endpoint)
    assert config["endpoint"] == endpoint.bind
    assert config["replay_endpoint"] == endpoint.replay
    assert config["enable_kv_cache_events"] is True and config["publisher"] == "zmq"


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_colocated_replicas_get_distinct_ports_in_the_documented_range() -> None:
    endpoints = [kv_events_endpoint("10.1.2.3", rank, free=free) for rank in range(MAX_REPLICAS_PER_NODE)]
    ports = [_port(e.advertised) for e in endpoints] + [_port(e.replay) for e in endpoints]
    assert sorted(ports) == list(KV_EVENTS_PORTS)
    assert all(_port(e.bind) == _port(e.advertised) for e in endpoints)


def test_a_held_pair_gives_way_to_the_highest_free_pair() -> None:
    """A replacement whose rank's ports an exiting engine still holds takes the top of
    the range, away from the low pairs the ranks starting beside it prefer."""
    held = {KV_EVENTS_BASE_PORT + 1, KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE - 1}
    endpoint = kv_events_endpoint("10.1.2.3", 1, free=lambda ip, port: port not in held)
    top = KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE - 2
    assert _port(endpoint.advertised) == top
    assert _port(endpoint.replay) == top + MAX_REPLICAS_PER_NODE


def test_a_held_replay_port_counts_as_a_held_pair() -> None:
    replay = KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE
    endpoint = kv_events_endpoint("10.1.2.3", 0, free=lambda ip, port: port != replay)
    assert _port(endpoint.advertised) != KV_EVENTS_BASE_PORT


def test_a_node_with_every_pair_held_is_refused() -> None:
    with pytest.raises(RuntimeError, match="in use"):
        kv_events_endpoint("10.1.2.3", 0, free=lambda ip, port: False)


def test_port_is_free_sees_a_bound_listener() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)


@pytest.mark.parametrize("rank", [-1, MAX_REPLICAS_PER_NODE])
def test_a_rank_outside_the_range_is_refused(rank: int) -> None:
    with pytest.raises(ValueError, match="outside the KV-event port range"):
        kv_events_port(rank)


@pytest.mark.parametrize(("node_ip", "message"), [
    ("0.0.0.0", "every interface"),
    ("fd00::5", "IPv6"),
    ("node-1.cluster.local", "not an IP address"),
    ("*", "not an IP address"),
])
def test_an_address_that_is_not_one_ipv4_node_address_is_refused(node_ip: str,
                                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kv_events_endpoint(node_ip, 0)


class FakeLLMConfig:
    def __init__(self) -> None:
        self.engine_kwargs: dict[str, Any] = {}

    def update_engine_kwargs(self, **kwargs: Any) -> None:
        self.engine_kwargs.update(kwargs)


class KVEventsReplica:
    """What ``_enable_kv_events`` uses of the replica: its LLM config."""

    def __init__(self) -> None:
        self._llm_config = FakeLLMConfig()
        self._kv_events_endpoint: str | None = None
        self._kv_events_replay_endpoint: str | None = None


def test_the_replica_binds_and_advertises_its_ray_node_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.ray.util, "get_node_ip_address", lambda: "10.9.8.7")
    monkeypatch.setattr(server, "_node_local_rank", lambda: 3)
    monkeypatch.setattr("serving.replica.kv_endpoint.port_is_free", free)
    replica = KVEventsReplica()
    server.CacheRouteServer._enable_kv_events(replica)  # type: ignore[arg-type]
    port = KV_EVENTS_BASE_PORT + 3
    replay_port = port + MAX_REPLICAS_PER_NODE
    assert replica._kv_events_endpoint == f"tcp://10.9.8.7:{port}"
    assert replica._kv_events_replay_endpoint == f"tcp://10.9.8.7:{replay_port}"
    config = replica._llm_config.engine_kwargs["kv_events_config"]
    assert config["endpoint"] == f"tcp://[::ffff:10.9.8.7]:{port}"
    assert config["replay_endpoint"] == f"tcp://10.9.8.7:{replay_port}"


def test_the_routing_stats_advertise_both_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    async def upstream_stats(self: object) -> dict[str, object]:
        return {}

    monkeypatch.setattr(server.LLMServer, "record_routing_stats", upstream_stats)
    monkeypatch.setattr(server.ray.util, "get_node_ip_address", lambda: "10.9.8.7")
    monkeypatch.setattr(server, "_node_local_rank", lambda: 0)
    monkeypatch.setattr("serving.replica.kv_endpoint.port_is_free", free)

    class StatsReplica(server.CacheRouteServer):
        def __del__(self) -> None:  # upstream's shuts an engine down; there is none
            pass

    # A replica object without its constructor: no engine, only what the stats read.
    replica = StatsReplica.__new__(StatsReplica)
    replica._llm_config = FakeLLMConfig()
    replica._enable_kv_events()
    stats = asyncio.run(replica.record_routing_stats())
    assert stats[KV_EVENTS_STATS_KEY] == f"tcp://10.9.8.7:{KV_EVENTS_BASE_PORT}"
    assert stats[KV_EVENTS_REPLAY_STATS_KEY] == (
        f"tcp://10.9.8.7:{KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE}")


# -- contract: the pinned Ray, vLLM and pyzmq ------------------------------------------

def test_serve_gives_each_replica_a_rank_on_its_node() -> None:
    # _node_local_rank reads serve.get_replica_context().rank.local_rank.
    import dataclasses

    from ray.serve.context import ReplicaContext
    from ray.serve.schema import ReplicaRank

    assert "rank" in {f.name for f in dataclasses.fields(ReplicaContext)}
    assert "local_rank" in ReplicaRank.model_fields
    assert ReplicaRank(rank=5, node_rank=1, local_rank=2).local_rank == 2


def _free_ports(host: str) -> tuple[int, int]:
    """Two distinct free ports (both held until chosen, so they differ)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind((host, 0))
        b.bind((host, 0))
        return a.getsockname()[1], b.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def test_vllm_binds_the_endpoint_on_the_node_address_only() -> None:
    # 127.0.0.2 stands for the node address; 127.0.0.1 for every other interface of
    # the node (Linux routes all of 127/8 to loopback).
    kv_events = pytest.importorskip("vllm.distributed.kv_events")
    zmq = pytest.importorskip("zmq")
    port, replay_port = _free_ports("127.0.0.2")
    endpoint = node_endpoint("127.0.0.2", port, replay_port)
    publisher = kv_events.ZmqEventPublisher(data_parallel_rank=0, endpoint=endpoint.bind,
                                            replay_endpoint=endpoint.replay)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        for bound in (port, replay_port):
            assert _accepts("127.0.0.2", bound), "the publisher did not bind the node address"
            assert not _accepts("127.0.0.1", bound), "the publisher bound other interfaces"
        sub.connect(endpoint.advertised)
        received = None
        deadline = time.monotonic() + 10.0
        while received is None and time.monotonic() < deadline:  # slow joiner: resend
            publisher.publish(kv_events.KVEventBatch(ts=1.0, events=[]))
            if sub.poll(100):
                received = sub.recv_multipart()
        assert received is not None, "no batch reached the advertised endpoint"
        assert len(received) == 3
    finally:
        sub.close(linger=0)
        publisher.shutdown()
