"""``kvbench`` results as Markdown tables and one PNG chart.

The transformers table has one row per turn with both modes in each cell
(``use_cache=True / use_cache=False``); the service table one row per turn with a
``cached_tokens`` and TTFT column pair per run (prefix cache on, off, or a ``--url``
run). The chart plots, per turn, TTFT and time per generated token for both modes,
the KV cache's size beside each mode's peak-RSS growth, and (when there are service
runs) the service's TTFT and cached tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.kv_generate import TurnRecord
from bench.kvbench_service import ServiceTurn, turns_by_run

_MIB = 2**20


def _by_mode(records: Sequence[TurnRecord]) -> tuple[dict[int, TurnRecord], dict[int, TurnRecord]]:
    cache = {r.turn: r for r in records if r.use_cache}
    plain = {r.turn: r for r in records if not r.use_cache}
    return cache, plain


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:,.1f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / _MIB:,.1f}"


def _pair(c: str, p: str) -> str:
    return f"{c} / {p}"


def _peak(r: TurnRecord | None) -> str:
    if r is None:
        return "-"
    return f"{_mib(r.peak_rss_bytes)} (+{_mib(r.peak_rss_growth_bytes)})"


def markdown_table(records: Sequence[TurnRecord]) -> str:
    """One row per turn; paired cells read ``use_cache=True / use_cache=False``."""
    cache, plain = _by_mode(records)
    out = [("| turn | context tokens | KV cache MiB | KV = formula | TTFT ms | ms/token | "
            "CPU ms/token | peak RSS MiB (+growth) |"),
           "|---:|---:|---:|:---:|---:|---:|---:|---:|"]
    for turn in sorted(set(cache) | set(plain)):
        c, p = cache.get(turn), plain.get(turn)
        either = c or p
        assert either is not None
        formula = "-" if c is None else ("yes" if c.kv_cache_bytes == c.kv_formula_bytes
                                         else "**no**")
        out.append(
            f"| {turn} | {either.context_tokens:,} | {_mib(c.kv_cache_bytes if c else None)} | "
            f"{formula} | {_pair(_ms(c.ttft_s if c else None), _ms(p.ttft_s if p else None))} | "
            f"{_pair(_ms(c.tpot_s if c else None), _ms(p.tpot_s if p else None))} | "
            f"{_pair(_ms(c.tpot_cpu_s if c else None), _ms(p.tpot_cpu_s if p else None))} | "
            f"{_pair(_peak(c), _peak(p))} |")
    return "\n".join(out)


def service_table(turns: Sequence[ServiceTurn]) -> str:
    runs = turns_by_run(turns)
    names = list(runs)
    head = "| turn | prompt tokens | " + " | ".join(
        f"cached tokens ({n}) | TTFT ms ({n})" for n in names) + " |"
    out = [head, "|---:|---:|" + "---:|---:|" * len(names)]
    by_turn = {n: {t.turn: t for t in runs[n]} for n in names}
    for turn in sorted({t.turn for t in turns}):
        row = [by_turn[n].get(turn) for n in names]
        prompt = next((t.prompt_tokens for t in row if t and t.prompt_tokens is not None), None)
        cells = []
        for t in row:
            if t is None or t.error is not None:
                cells += ["error" if t else "-", "-"]
            else:
                cells += ["-" if t.cached_tokens is None else f"{t.cached_tokens:,}",
                          _ms(t.ttft_s)]
        out.append(f"| {turn} | {'-' if prompt is None else f'{prompt:,}'} | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def write_chart(path: Path, records: Sequence[TurnRecord], service: Sequence[ServiceTurn] = (),
                *, title: str) -> None:
    """Three panels for the transformers runs, a fourth for the service runs (if any)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = (3 if records else 0) + (1 if service else 0)
    if panels == 0:
        raise ValueError("nothing to chart")
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 4.0), squeeze=False)
    row = list(axes[0])
    if records:
        _local_panels(row[0], row[1], row[2], records)
    if service:
        _service_panel(row[-1], service)
    for ax in row:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("turn")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _local_panels(ttft: Any, tpot: Any, memory: Any, records: Sequence[TurnRecord]) -> None:
    cache, plain = _by_mode(records)
    for label, rows, color in (("use_cache=True", cache, "tab:blue"),
                               ("use_cache=False", plain, "tab:red")):
        turns = sorted(rows)
        if not turns:
            continue
        ttft.plot(turns, [rows[t].ttft_s * 1e3 for t in turns], "o-", color=color, label=label)
        tpot.plot(turns, [rows[t].tpot_s * 1e3 for t in turns], "o-", color=color, label=label)
        tpot.plot(turns, [rows[t].tpot_cpu_s * 1e3 for t in turns], "x--", color=color,
                  alpha=0.6, label=f"{label}, CPU time")
        memory.plot(turns, [rows[t].peak_rss_growth_bytes / _MIB for t in turns], "o-",
                    color=color, label=f"peak RSS growth since turn 1, {label}")
    ttft.set_title("Time to first token")
    ttft.set_ylabel("ms")
    tpot.set_title("Time per generated token (after the first)")
    tpot.set_ylabel("ms")
    for ax in (ttft, tpot):
        ax.legend(loc="upper left", fontsize=8)
    # One MiB axis: the cache's size and what the process's peak grew by are comparable.
    memory.set_title("Memory beyond the loaded model")
    memory.set_ylabel("MiB")
    turns = sorted(cache)
    if turns:
        memory.bar(turns, [cache[t].kv_cache_bytes / _MIB for t in turns], color="tab:blue",
                   alpha=0.2, label="KV cache, measured (use_cache=True)")
        memory.plot(turns, [cache[t].kv_formula_bytes / _MIB for t in turns], "k_",
                    markersize=12, label="KV cache, 2·L·H·d·T·bytes")
    memory.set_ylim(0, memory.get_ylim()[1] * 1.5)  # room for the legend above the bars
    memory.legend(loc="upper left", fontsize=7)


def _service_panel(ax: Any, service: Sequence[ServiceTurn]) -> None:
    cached_ax = ax.twinx()
    runs = turns_by_run(service)
    width = 0.8 / max(1, len(runs))
    for k, (name, rows) in enumerate(runs.items()):
        ok = [t for t in rows if t.error is None]
        color = f"C{k + 2}"
        timed = [t for t in ok if t.ttft_s is not None]
        ax.plot([t.turn for t in timed], [t.ttft_s * 1e3 for t in timed if t.ttft_s is not None],
                "o-", color=color, label=f"TTFT, {name}")
        cached_ax.bar([t.turn - 0.4 + width * (k + 0.5) for t in ok],
                      [t.cached_tokens or 0 for t in ok], width=width, color=color, alpha=0.25,
                      label=f"cached tokens, {name}")
    ax.set_title("Service (vLLM)")
    ax.set_ylabel("TTFT (ms)")
    cached_ax.set_ylabel("cached prompt tokens")
    lines, labels = ax.get_legend_handles_labels()
    bar_lines, bar_labels = cached_ax.get_legend_handles_labels()
    ax.legend(lines + bar_lines, labels + bar_labels, loc="upper left", fontsize=7)
