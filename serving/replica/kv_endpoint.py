"""Where an engine publishes its KV events: the node's address, a port fixed by rank.

The router subscribes to every engine's KV events from the ingress process, usually on
another node, so the publisher must listen on an address the routers reach, and
nowhere else: the events carry token ids. That address is the replica's node IP as Ray
knows it (``ray.util.get_node_ip_address()``), the one Ray's own processes use to reach
the node; the replica binds there and advertises exactly that address in its routing
stats (serving/contract.py), so what the router connects to is what the engine bound.

The engine also binds a replay endpoint (vLLM's ROUTER socket, answering a sequence
number with the batches it still buffers from there on), from which a router that
starts, or that missed batches, rebuilds what it lacks (serving/routing/kv_events.py).

The PUB port is ``KV_EVENTS_BASE_PORT`` plus the replica's rank on its node within the
deployment (Serve's ``ReplicaRank.local_rank``: 0 for the first replica on a node); the
replay port is ``MAX_REPLICAS_PER_NODE`` above it. A rank's pair can still be held when
the replica starts: Serve hands a replacement its predecessor's rank, or renumbers the
ranks of a scaled-down deployment, while the old engine process is still exiting. The
replica then takes the highest free pair of the range instead, far from the low pairs
the ranks of replicas starting beside it prefer. Either way the whole range
``KV_EVENTS_BASE_PORT`` .. ``KV_EVENTS_BASE_PORT + 2 * MAX_REPLICAS_PER_NODE - 1``
(``KV_EVENTS_PORTS``) is known before anything starts, so
a NetworkPolicy or a firewall can name it (helm/cacheroute/templates/networkpolicy.yaml,
docs/security.md).

How vLLM 0.32's ``ZmqEventPublisher`` treats the endpoint decides its spelling: it
*binds* only an endpoint containing ``*`` or ``::`` (a wildcard) and *connects* to any
other, so ``tcp://10.0.0.5:5600`` would make the engine dial out to a port nobody
listens on. The bind endpoint is therefore the node's IPv4 address written as an
IPv4-mapped IPv6 literal, ``tcp://[::ffff:10.0.0.5]:5600``: vLLM sees ``::`` and
binds, and ZMQ binds such an address as the plain IPv4 address (its LAST_ENDPOINT
reads ``tcp://10.0.0.5:5600``). The replay socket is bound whatever its endpoint,
so it takes the plain address. These behaviours are contract-tested against the
pinned vLLM and pyzmq (tests/unit/serving/replica/test_kv_endpoint.py). vLLM does not
set ZMQ_IPV6 on the publisher, so an IPv6 node address cannot be bound at all: such a
node is refused here with the reason rather than published on every interface.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

# First port of the KV-event range: above vLLM's own default (5557), so an engine
# started by hand with vLLM's defaults on the same node does not take a replica's port.
# Changing it moves the range the chart's NetworkPolicy and docs/security.md name.
KV_EVENTS_BASE_PORT: Final = 5600
# Replicas of the deployment one node may host, hence the size of the port range. A
# node runs one replica per engine it can hold (one per pod in the chart); a rank past
# this is refused at start rather than bound outside the documented range.
MAX_REPLICAS_PER_NODE: Final = 64
# Every port a replica may bind for KV events: the PUB ports, then the replay ports.
KV_EVENTS_PORTS: Final = range(KV_EVENTS_BASE_PORT,
                               KV_EVENTS_BASE_PORT + 2 * MAX_REPLICAS_PER_NODE)


@dataclass(frozen=True, kw_only=True)
class KVEventsEndpoint:
    """One engine's KV-event endpoint: what vLLM binds and what the replica advertises."""

    bind: str
    """The endpoint given to vLLM's publisher (binds the node address, see the module)."""
    advertised: str
    """The endpoint routers connect to: the same address and port, as plain IPv4."""
    replay: str
    """The replay endpoint, bound and advertised alike (the node address)."""


def kv_events_port(local_rank: int) -> int:
    """The PUB port of the replica of this node-local rank."""
    if not 0 <= local_rank < MAX_REPLICAS_PER_NODE:
        raise ValueError(
            f"replica rank {local_rank} on this node is outside the KV-event port range "
            f"{KV_EVENTS_BASE_PORT}-{KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE - 1}: "
            f"at most {MAX_REPLICAS_PER_NODE} replicas per node")
    return KV_EVENTS_BASE_PORT + local_rank


def kv_events_endpoint(node_ip: str, local_rank: int, *,
                       free: Callable[[str, int], bool] | None = None) -> KVEventsEndpoint:
    """The endpoints of the replica of ``local_rank`` on the node at ``node_ip``: its
    rank's pair of ports, or the highest pair ``free`` finds unbound (module docstring)."""
    free = free or port_is_free
    _ipv4(node_ip)  # refused before any port is probed
    preferred = kv_events_port(local_rank)
    slots = [preferred, *range(KV_EVENTS_BASE_PORT + MAX_REPLICAS_PER_NODE - 1,
                               KV_EVENTS_BASE_PORT - 1, -1)]
    for port in slots:
        replay = port + MAX_REPLICAS_PER_NODE
        if free(node_ip, port) and free(node_ip, replay):
            return node_endpoint(node_ip, port, replay)
    raise RuntimeError(f"every KV-event port of {KV_EVENTS_BASE_PORT}-"
                       f"{KV_EVENTS_PORTS[-1]} on {node_ip} is in use")


def port_is_free(node_ip: str, port: int) -> bool:
    """Whether a TCP listener could bind ``node_ip``:``port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((node_ip, port))
        except OSError:
            return False
    return True


def node_endpoint(node_ip: str, port: int, replay_port: int) -> KVEventsEndpoint:
    """``port`` and ``replay_port`` bound on exactly ``node_ip`` by vLLM's publisher,
    and advertised there."""
    address = _ipv4(node_ip)
    return KVEventsEndpoint(bind=f"tcp://[::ffff:{address}]:{port}",
                            advertised=f"tcp://{address}:{port}",
                            replay=f"tcp://{address}:{replay_port}")


def _ipv4(node_ip: str) -> ipaddress.IPv4Address:
    """``node_ip`` as one IPv4 node address, or the reason it cannot carry KV events."""
    try:
        address = ipaddress.ip_address(node_ip)
    except ValueError:
        raise ValueError(f"node address {node_ip!r} is not an IP address") from None
    if address.version != 4:
        raise ValueError(
            f"node address {node_ip} is IPv6: vLLM's KV-event publisher binds only IPv4 "
            "addresses (it does not enable ZMQ_IPV6); run the replicas on IPv4 node "
            "addresses or with routing.policy other than 'cacheroute'")
    if address.is_unspecified:
        raise ValueError("node address 0.0.0.0 would publish KV events on every interface")
    return address


def kv_events_config(endpoint: KVEventsEndpoint) -> dict[str, Any]:
    """vLLM's ``kv_events_config`` engine argument publishing on ``endpoint``."""
    return {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": endpoint.bind,
        "replay_endpoint": endpoint.replay,
        "topic": "",
    }
