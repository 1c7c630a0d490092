"""The `routing` section: its defaults are the routing core's, and bad values are one
line naming the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from router import PolicyConfig
from serving.config import ServiceConfig
from serving.routing.config import POLICIES, RoutingConfig
from tests.unit.serving.config_factories import config_error, load_text


def test_the_service_routes_with_the_routing_cores_defaults() -> None:
    """The simulator and the benchmarks take their defaults from ``PolicyConfig``; the
    service must route the same way when the config says nothing."""
    routing, core = ServiceConfig().routing, PolicyConfig()
    assert (routing.load_epsilon, routing.load_floor) == (core.load_epsilon, core.load_floor)
    assert (routing.virtual_nodes, routing.session_affinity) == \
        (core.virtual_nodes, core.session_affinity)


def test_every_knob_shared_with_the_core_has_the_cores_default() -> None:
    core = {f.name: f.default for f in dataclasses.fields(PolicyConfig)}
    shared = set(core) & set(RoutingConfig.model_fields)
    assert shared >= {"load_epsilon", "load_floor", "virtual_nodes", "max_index_blocks",
                      "ownership_ttl_s", "session_affinity"}
    routing = RoutingConfig()
    assert {name: getattr(routing, name) for name in shared} == \
        {name: core[name] for name in shared}


def test_policies_are_the_literal_the_field_accepts() -> None:
    assert POLICIES == ("pow2", "ray-prefix", "cacheroute", "random")
    assert {RoutingConfig(policy=p).policy for p in POLICIES} == set(POLICIES)


def test_routing_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, "routing: {policy: ray-prefix, load_epsilon: 0.5}")
    assert config.routing.policy == "ray-prefix" and config.routing.load_epsilon == 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routing: {policy: round-robin}",
         "routing.policy: Input should be 'pow2', 'ray-prefix', 'cacheroute' or 'random'"),
        ("routing: {load_floor: -1}",
         "routing.load_floor: Input should be greater than or equal to 0"),
        ("routing: {load_epsilon: 0}", "routing.load_epsilon: Input should be greater than 0"),
        ("routing: {spill_wait_s: 61}",
         "routing.spill_wait_s: Input should be less than or equal to 60"),
    ],
)
def test_invalid_routing_is_one_line_naming_field(tmp_path: Path, text: str,
                                                  expected: str) -> None:
    assert expected in config_error(tmp_path, text)
