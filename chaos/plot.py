"""The drill's PNG timeline: throughput, errors and hit rate per second, the fault marked.

Two stacked panels sharing the time axis (seconds since the load started): requests
succeeded and failed per second (bars), and the per-second hit rate of the
succeeded requests (points) with the pre-fault value as a dashed line and 90% of it
dotted. A red line marks the fault, a green one recovery, a shaded band the
recovery interval; hang-replica's resume is a grey line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_timeline(path: Path, report: Mapping[str, Any]) -> Path:
    """Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["timeline"]
    t = [row["t_s"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.bar(t, [row["succeeded"] for row in rows], width=1.0, align="edge",
            color="tab:blue", label="succeeded / s")
    top.bar(t, [row["failed"] for row in rows], width=1.0, align="edge",
            bottom=[row["succeeded"] for row in rows], color="tab:red", label="failed / s")
    top.set_ylabel("requests per second")
    hits = [(row["t_s"] + 0.5, row["hit_rate"]) for row in rows if row["hit_rate"] is not None]
    if hits:
        bottom.plot([x for x, _ in hits], [y for _, y in hits], "o", ms=3, color="tab:green",
                    label="hit rate (per second)")
    before = report.get("hit_rate_before")
    if before is not None:
        bottom.axhline(before, color="grey", ls="--", lw=1, label="before the fault")
        bottom.axhline(0.9 * before, color="grey", ls=":", lw=1, label="90% of before")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("cached / prompt tokens")
    bottom.set_xlabel("seconds since the load started")
    fault = report.get("fault") or {}
    for ax in (top, bottom):
        if fault.get("at_s") is not None:
            ax.axvline(fault["at_s"], color="red", lw=1.5, label="fault")
        if fault.get("resumed_at_s") is not None:
            ax.axvline(fault["resumed_at_s"], color="grey", lw=1, label="resumed")
        if fault.get("recovered_at_s") is not None:
            ax.axvline(fault["recovered_at_s"], color="green", lw=1.5, label="recovered")
            if fault.get("at_s") is not None:
                ax.axvspan(fault["at_s"], fault["recovered_at_s"], color="red", alpha=0.07)
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="lower right", fontsize=8)
    recovery = report.get("recovery_s")
    fig.suptitle(f"drill {report['drill']}: {report['replicas']} replicas, "
                 f"{report['sent']} sent, {report['failed']} failed, "
                 f"{report['broken_streams']} broken streams, recovery "
                 + (f"{recovery:.1f} s" if recovery is not None else "not reached"),
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
