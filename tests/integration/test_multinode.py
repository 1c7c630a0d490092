"""End-to-end on a Ray cluster of several nodes: `cacheroute serve --address` deploys
onto a cluster it did not start.

The cluster runs on this machine (``ray.cluster_utils.Cluster``): a head without CPUs
(the Serve controller, the HTTP proxy and, with no CPU asked, the ingress fit there)
on 127.0.0.4, and two worker nodes on 127.0.0.2 and 127.0.0.3, each with the logical
CPUs of exactly one engine replica (`ENGINE_NODE_CPUS`).
Ray rewrites 127.0.0.1 to the machine's primary address, hence the other loopback
addresses, one per node. Nodes sharing a machine make the service run Serve's proxy
on the head only (serving/cluster.py).

What a single-node stack cannot show: each engine publishes its KV events on its own
node's address, which the router in the ingress follows across nodes to route a
repeated prompt to the replica holding it; and a whole worker node lost under load
costs no request (serving/failover). One cluster, one stack, a handful of requests;
`max_model_len` is the shared stack's, so no engine compiles anew.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.service import RUN_TAG_ENV, end_tagged
from chaos.cluster import INGRESS_DEPLOYMENT, ReplicaInfo, ServeCluster
from serving.contract import (
    ENGINE_STATS_KEY,
    KV_EVENTS_REPLAY_STATS_KEY,
    KV_EVENTS_STATS_KEY,
)
from serving.runtime import prepare_environment
from tests.integration.conftest import Stack, start_stack, stop_stack
from tests.integration.test_cacheroute import BLOCK, chat_body, tenant_prompt

pytestmark = pytest.mark.integration

HEAD_IP = "127.0.0.4"
WORKER_IPS = ("127.0.0.2", "127.0.0.3")
# A CPU replica's placement group is one bundle: the engine's device ({"CPU": 1}, Ray
# Serve LLM's CPU default) merged with the replica actor's `engine.cpus_per_replica`
# (1 by default), so a node of two logical CPUs holds one replica and never two.
ENGINE_NODE_CPUS = 2


@dataclass
class MultiNode:
    stack: Stack
    cluster: Any  # ray.cluster_utils.Cluster
    workers: dict[str, Any]  # worker node address -> its Ray node
    serve: ServeCluster


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    from ray.cluster_utils import Cluster

    tag = uuid.uuid4().hex
    # What this fixture puts in the environment leaves with it.
    with mock.patch.dict(os.environ):
        # The cluster's processes inherit this environment: token auth off, as the
        # service's driver runs it, or the driver could not join; and a tag of their
        # own, so that whatever outlives the cluster's shutdown (an engine orphaned by
        # its node's loss) is found and ended before the next test.
        prepare_environment()
        os.environ[RUN_TAG_ENV] = tag
        cluster = Cluster()
        try:
            # The first node added is the head.
            cluster.add_node(node_ip_address=HEAD_IP, num_cpus=0, include_dashboard=False)
            workers = {ip: cluster.add_node(node_ip_address=ip, num_cpus=ENGINE_NODE_CPUS)
                       for ip in WORKER_IPS}
            del os.environ[RUN_TAG_ENV]
            proc, stack = start_stack(tmp_path_factory.mktemp("multinode"),
                                      address=cluster.address)
            try:
                with ServeCluster(cluster.address) as serve_cluster:
                    yield MultiNode(stack, cluster, workers, serve_cluster)
            finally:
                stop_stack(proc)
        finally:
            cluster.shutdown()
            end_tagged(tag)


def engine_replicas(m: MultiNode) -> list[ReplicaInfo]:
    return [r for r in m.serve.replicas() if r.deployment != INGRESS_DEPLOYMENT and r.running]


def routing_stats(replica: ReplicaInfo) -> dict[str, Any]:
    """What the replica reports to the routers, asked of its actor now (the method
    Serve's controller polls), rather than as last broadcast."""
    import ray

    actor = ray.get_actor(replica.actor_name, namespace="serve")
    return dict(ray.get(actor.record_routing_stats.remote(), timeout=60))


def router_kv_events_stored(stack: Stack) -> float:
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "cacheroute_router_kv_events_total"
               and s.labels.get("kind") == "stored")


def test_each_replica_runs_on_its_own_node_and_publishes_kv_events_there(
        multinode: MultiNode) -> None:
    """Never a wildcard, never another node's address: the router connects to what
    the engine bound, on the node the engine runs on."""
    import ray

    replicas = engine_replicas(multinode)
    assert sorted(r.node_ip or "" for r in replicas) == sorted(WORKER_IPS), replicas
    # The node each runs on, as Ray's node table names it: not the replica's own word.
    addresses = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    assert [addresses.get(r.node_id or "") for r in replicas] == [r.node_ip for r in replicas]
    for replica in replicas:
        stats = routing_stats(replica)
        for key in (KV_EVENTS_STATS_KEY, KV_EVENTS_REPLAY_STATS_KEY):
            endpoint = urlparse(stats[key])
            assert (endpoint.scheme, endpoint.hostname) == ("tcp", replica.node_ip), stats


def test_a_repeated_prompt_is_served_from_cache_across_nodes(multinode: MultiNode) -> None:
    """The router, in the ingress process, sends each repeat to the replica that
    computed the prompt, on whichever node that is, and the KV events it follows
    reach it from the engines' nodes."""
    stack = multinode.stack
    system = tenant_prompt("Initech", rules=40)
    client = stack.client()
    usages = [client.chat.completions.create(**chat_body(stack, system, "Which rule?")).usage
              for _ in range(3)]
    full_blocks = (usages[0].prompt_tokens - 20) // BLOCK  # the system prompt's full blocks
    assert full_blocks >= 4, usages[0]
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    for usage in usages[1:]:
        assert usage.prompt_tokens_details.cached_tokens >= full_blocks * BLOCK, usages
    deadline = time.monotonic() + 30
    while router_kv_events_stored(stack) == 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert router_kv_events_stored(stack) > 0


def _ask(stack: Stack, name: str, max_tokens: int) -> int:
    body = chat_body(stack, tenant_prompt(name, rules=6), "Recite the rules.",
                     max_tokens=max_tokens, ignore_eos=True)
    with stack.http() as http:
        return http.post("/v1/chat/completions", json=body).status_code


def test_losing_a_worker_node_costs_no_request(multinode: MultiNode) -> None:
    """Requests in flight on the lost node's engine are retried on the survivor, and
    the survivor serves everything after. The node lost is one without the ingress:
    losing the ingress's node loses the front door, which no retry behind it saves."""
    m = multinode
    ingress_nodes = {r.node_ip for r in m.serve.replicas() if r.deployment == INGRESS_DEPLOYMENT}
    replicas = engine_replicas(m)
    victims = [r for r in replicas if r.node_ip not in ingress_nodes]
    assert victims, f"every engine's node also holds an ingress replica: {replicas}"
    victim = victims[0]
    survivor = next(r for r in replicas if r.replica_id != victim.replica_id)

    # Distinct prompts, so both replicas get some; long enough to be in flight at the kill.
    names = [f"Tenant{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        during = [pool.submit(_ask, m.stack, name, 128) for name in names]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            engine = routing_stats(victim).get(ENGINE_STATS_KEY, {})
            if engine.get("running", 0) + engine.get("waiting", 0) > 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no request reached the replica on the node to be lost")
        m.cluster.remove_node(m.workers[victim.node_ip])
        assert [f.result(timeout=600) for f in during] == [200] * len(names)

    def served() -> int:
        return int(routing_stats(survivor)[ENGINE_STATS_KEY]["request_success"])

    served_before = served()
    after = [_ask(m.stack, f"After{i}", 4) for i in range(3)]
    assert after == [200] * 3
    # The engine counts a request when its stats logger records it, which may trail
    # the response by an engine step.
    deadline = time.monotonic() + 30
    while served() - served_before < len(after) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served() - served_before >= len(after)
