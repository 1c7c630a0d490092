"""Operator sweeps: which policies vary with the swept value, and the chart."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.sim.comparison import add_arguments
from bench.sim.sweep import BASE, SWEEPS, run_sweep, write_chart


def _tiny_base() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    p.set_defaults(**{**BASE, "replicas": 3, "tenants": 4, "requests": 40, "rate": 4.0,
                      "system_prompt_words": 40, "block_size": 16})
    return p.parse_args([])


def test_the_ingress_sweep_adds_a_tree_per_ingress_and_draws_the_shared_tree_flat(
        tmp_path: Path) -> None:
    sweep = next(s for s in SWEEPS if s.name == "ingresses")
    points = run_sweep(sweep, _tiny_base())
    by_policy: dict[str, list[dict[str, object]]] = {}
    for point in points:
        by_policy.setdefault(str(point["policy"]), []).append(point)
    assert set(by_policy) == {"cacheroute", "pow2", "ray-prefix", "ray-prefix-local"}
    for policy, mine in by_policy.items():
        assert [p["value"] for p in mine] == list(sweep.values)
        # One shared tree: K routers decide as one, so it is run once, at the base point.
        assert all(p["fixed"] for p in mine) == (policy == "ray-prefix")
        assert all(p["requests"] == 40 for p in mine)
    chart = tmp_path / "sim-ingresses.png"
    write_chart(chart, sweep, points, "tiny")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
