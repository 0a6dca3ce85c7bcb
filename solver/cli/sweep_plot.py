"""`melange sweep --plot`: cost against rate for the mix and each single GPU type, and the mix's
composition, as a PNG (matplotlib, the optional extra `plot`).

Styled after the Mélange paper's Figures 11-13 (cost of each single type beside Mélange's at rates
1-32 req/s): here absolute $/h on log-log axes, so that every rate is readable and a constant
ratio is a constant gap, with the mix's replicas per type stacked below each rate.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melange.solver.errors import InputError

# One colour per option, in the order of the options; the mix is drawn in the paper's purple.
OPTION_COLOURS = ("#2e7d32", "#1f4fbf", "#b3443f", "#d4892a", "#17becf", "#7f7f7f", "#bcbd22", "#8c564b",
                  "#e377c2", "#393b79")
MIX_COLOUR = "#8e2a9e"


def require_matplotlib() -> None:
    """Refuse --plot up front, before any solving, when matplotlib is not installed. The advice names
    what works here: no package is published, so the checkout's extra, or matplotlib into the very
    interpreter running this command."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError("--plot", "needs matplotlib, which is not installed",
                         f"from a checkout: .venv/bin/pip install -e '.[plot]'; "
                         f"or into this Python: {sys.executable} -m pip install matplotlib")


def _bar_edges(rates: Sequence[float]) -> tuple[list[float], list[float]]:
    """Left edge and width of a bar centred (in log space) on each rate, narrower than the gaps."""
    logs = sorted(math.log10(r) for r in rates)
    gaps = [b - a for a, b in zip(logs, logs[1:])]
    half = 0.3 * (min(gaps) if gaps else 1.0)
    return [r * 10 ** -half for r in rates], [r * (10 ** half - 10 ** -half) for r in rates]


def _saving_label(saving: float) -> str:
    """'15%' for a mix 15% cheaper than the best single type (the caption: the mix's saving), '-5%' for
    one 5% dearer (floors or a move cost), '0%' where the mix is that type; as the table's 'saves'."""
    return f"{round(saving)}%"


def _single_label(name: str, costs: Sequence[float | None]) -> str:
    """The legend entry of a single type, saying where it draws no (or not every) point."""
    if all(cost is None for cost in costs):
        return f"{name} only (cannot serve alone)"
    if any(cost is None for cost in costs):
        return f"{name} only (not alone at every rate)"
    return f"{name} only"


def _money(value: float, _position: Any = None) -> str:
    return f"${value:g}"


def _rate_label(value: float, _position: Any = None) -> str:
    return f"{value:g}"


def plot_sweep(path: Path, sweeps: Sequence[tuple[str, Sequence[dict[str, Any]]]], option_names: Sequence[str],
               model: str | None, mode: str, grid: str) -> None:
    """Write the PNG: one column per SLO (label, points as `sweep_point` dicts), cost vs rate on top
    and the mix's replicas per option as stacked bars below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    colours = {name: OPTION_COLOURS[k % len(OPTION_COLOURS)] for k, name in enumerate(option_names)}
    most_replicas = max([sum(p["replicas"].values()) for _, points in sweeps for p in points] + [1])
    known = [c for _, points in sweeps for p in points for c in [p["cost_per_hour"], *p["single_type"].values()] if c]
    figure, axes = plt.subplots(2, len(sweeps), figsize=(8 * len(sweeps), 9), squeeze=False, sharex="col", sharey="row",
                                gridspec_kw={"height_ratios": [3, 2]})
    for column, (slo_label, points) in enumerate(sweeps):
        points = sorted(points, key=lambda p: p["rate"])
        rates = [p["rate"] for p in points]
        cost_axis, mix_axis = axes[0][column], axes[1][column]
        for name in option_names:
            costs = [math.nan if p["single_type"][name] is None else p["single_type"][name] for p in points]
            cost_axis.plot(rates, costs, "--o", color=colours[name], linewidth=1.6, markersize=5,
                           label=_single_label(name, [p["single_type"][name] for p in points]))
        mix = [math.nan if p["cost_per_hour"] is None else p["cost_per_hour"] for p in points]
        cost_axis.plot(rates, mix, "-D", color=MIX_COLOUR, linewidth=2.8, markersize=7, label="Mélange mix", zorder=5)
        for rate, cost, point in zip(rates, mix, points):
            saving = point["savings_vs_best_single_percent"]
            if saving is not None and not math.isnan(cost):
                cost_axis.annotate(_saving_label(saving), (rate, cost), textcoords="offset points", xytext=(0, -15),
                                   ha="center", va="top", fontsize=9, color=MIX_COLOUR, fontweight="bold")
        cost_axis.set_xscale("log")
        cost_axis.set_yscale("log")
        cost_axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        cost_axis.yaxis.set_major_formatter(FuncFormatter(_money))
        cost_axis.yaxis.set_minor_locator(NullLocator())
        if known:  # room below the lowest point for its saving's label
            cost_axis.set_ylim(min(known) / 1.45, max(known) * 1.25)
        cost_axis.set_ylabel("cost ($/h)")
        unsolved = [p["rate"] for p in points if p["cost_per_hour"] is None]
        cost_axis.set_title((f"SLO {slo_label}\n" if len(sweeps) > 1 else "")
                            + "labels: the mix's saving against the best single type"
                            + (f"\nno mix at {', '.join(f'{r:g}' for r in unsolved)} req/s (infeasible)"
                               if unsolved else ""), fontsize=10)
        cost_axis.grid(True, which="major", alpha=0.5)
        cost_axis.legend(loc="upper left", fontsize=9, framealpha=0.9)

        lefts, widths = _bar_edges(rates)
        bottoms = [0] * len(points)
        for name in option_names:
            counts = [p["replicas"][name] for p in points]
            if not any(counts):
                continue
            mix_axis.bar(lefts, counts, widths, bottom=bottoms, align="edge", color=colours[name],
                         edgecolor="white", linewidth=0.8, label=name)
            for left, width, bottom, count in zip(lefts, widths, bottoms, counts):
                if count:
                    mix_axis.text(math.sqrt(left * (left + width)), bottom + count / 2, str(count), ha="center",
                                  va="center", fontsize=9, color="white", fontweight="bold")
            bottoms = [b + c for b, c in zip(bottoms, counts)]
        mix_axis.set_xscale("log")
        mix_axis.xaxis.set_major_locator(FixedLocator(rates))
        mix_axis.xaxis.set_major_formatter(FuncFormatter(_rate_label))
        mix_axis.xaxis.set_minor_locator(NullLocator())
        mix_axis.set_xlabel("request rate (req/s)")
        mix_axis.set_ylabel("replicas in the mix")
        mix_axis.set_ylim(0, most_replicas * 1.08)
        mix_axis.grid(True, axis="y", alpha=0.5)
        if any(p["replicas"][name] for p in points for name in option_names):  # else no bar, no legend
            mix_axis.legend(loc="upper left", fontsize=9, title="mix composition", title_fontsize=9,
                            framealpha=0.9)
    slo = f", SLO {sweeps[0][0]}" if len(sweeps) == 1 else ""
    figure.suptitle(f"Mélange sweep: {model or 'model not stated'}{slo}\n{mode} mode, {grid}", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=130)
    plt.close(figure)
