"""The Pareto picture of mixed precision: the measured top-1 of chosen points (and of uniform widths,
for comparison) against their size, above the frontier of size against summed sensitivity."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfq.io import save_png


@dataclass(frozen=True)
class MeasuredPoint:
    """One student: its size (the budget's unit), its top-1, a label (`mixed 3.0`, `W3A8 +distill`),
    whether its widths were mixed and whether a step after calibration made it."""

    size: float
    top1: float
    label: str
    mixed: bool = True
    later: bool = False


def plot_frontier(
    frontier: Sequence[dict[str, Any]], points: Sequence[MeasuredPoint], unit: str, path: str | Path
) -> None:
    """Write a PNG: the measured top-1 of each point against its size (above; filled markers after
    calibration, hollow after a later step, a collapsed student as a triangle at the lower edge) and
    the frontier's summed sensitivity (below, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 7), height_ratios=(2, 1))
    best = max((p.top1 for p in points), default=100.0)
    floor = min((p.top1 for p in points if p.top1 >= best / 2), default=0.0) - 4  # collapsed: at the edge
    for p in points:
        shown = max(p.top1, floor + 1)
        colour, marker = ("C0", "o") if p.mixed else ("C3", "s")
        marker = marker if p.top1 >= floor else "v"
        top.plot(p.size, shown, marker, color=colour, markerfacecolor="white" if p.later else colour)
        side = (-6, "right") if p.mixed else (6, "left")  # mixed labels left, uniform right
        top.annotate(f"{p.label}: {p.top1:.2f}", (p.size, shown), fontsize="x-small", ha=side[1],
                     xytext=(side[0], -3), textcoords="offset points")  # fmt: skip
    top.set_ylim(floor, best + 2)
    top.set_ylabel("test top-1 %")
    top.set_title("blue: mixed, red: uniform; hollow: after the later step", fontsize="small")
    top.grid(alpha=0.3)
    bottom.plot([p["size"] for p in frontier], [max(p["sensitivity"], 1e-12) for p in frontier], "k.-")
    bottom.set_yscale("log")
    bottom.set_xlabel(unit)
    bottom.set_ylabel("least summed\nsensitivity")
    bottom.grid(alpha=0.3)
    save_png(figure, path)


def measured_points(
    roots: Sequence[str | Path], a_bits: int, kind: str = "avg_weight_bits"
) -> list[MeasuredPoint]:
    """Mean top-1 and size per setting (mixed at each budget, uniform at each width) of the runs under
    `roots` whose activations are at `a_bits`, read from their metrics.json (seeds averaged); runs
    ending in a later step than calibration are a point of their own (`W3A8 +distill`)."""
    groups: dict[tuple[str, bool, bool], list[tuple[float, float]]] = {}
    for path in sorted(p for root in roots for p in Path(root).rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        if int(metrics["a_bits"]) != a_bits:
            continue
        for result in metrics["sources"].values():
            if "size" not in result:
                continue
            choice = result.get("mixed_precision")
            label = f"mixed {choice['options'].get('budget')}" if choice else f"W{metrics['w_bits']}A{a_bits}"
            last = result["steps"][-1]
            later = last["name"] != "calibrate"  # a later step: its own point
            label += f" +{last['name']}" if later else ""
            groups.setdefault((label, bool(choice), later), []).append((result["size"][kind], last["top1"]))
    return [
        MeasuredPoint(
            statistics.fmean(s for s, _ in pairs), statistics.fmean(t for _, t in pairs), label, mixed, later
        )
        for (label, mixed, later), pairs in sorted(groups.items())
    ]
