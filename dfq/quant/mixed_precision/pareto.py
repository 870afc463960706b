"""The Pareto picture of mixed precision: size against summed sensitivity along the frontier, with
the measured top-1 of chosen points (and of uniform widths, for comparison) on a second axis."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfq.io import atomic_path


@dataclass(frozen=True)
class MeasuredPoint:
    """One student: its size (the budget's unit), its top-1, and a label (`mixed 3.0`, `uniform W3`)."""

    size: float
    top1: float
    label: str
    mixed: bool = True


def plot_frontier(
    frontier: Sequence[dict[str, Any]], points: Sequence[MeasuredPoint], unit: str, path: str | Path
) -> None:
    """Write the frontier (left axis, log scale) and the measured points (right axis) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, left = plt.subplots(figsize=(7, 4.5))
    left.plot([p["size"] for p in frontier], [max(p["sensitivity"], 1e-12) for p in frontier], "k.-",
              label="least summed sensitivity")  # fmt: skip
    left.set_yscale("log")
    left.set_xlabel(unit)
    left.set_ylabel("summed sensitivity (frontier)")
    right = left.twinx()
    for mixed, marker, name in ((True, "o", "mixed, measured"), (False, "s", "uniform, measured")):
        chosen = [p for p in points if p.mixed == mixed]
        if chosen:
            colour = "C0" if mixed else "C3"
            sizes, top1 = [p.size for p in chosen], [p.top1 for p in chosen]
            right.plot(sizes, top1, marker, color=colour, linestyle="none", label=name)
        for p in chosen:
            right.annotate(f"{p.label}: {p.top1:.2f}", (p.size, p.top1), fontsize="x-small",
                           xytext=(4, 4), textcoords="offset points")  # fmt: skip
    right.set_ylabel("test top-1 %")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="center right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def measured_points(
    roots: Sequence[str | Path], a_bits: int, kind: str = "avg_weight_bits"
) -> list[MeasuredPoint]:
    """Mean top-1 and size per setting (mixed at each budget, uniform at each width) of the runs under
    `roots` whose activations are at `a_bits`, read from their metrics.json (seeds averaged); runs
    ending in a later step than calibration are a point of their own (`W3A8 +distill`)."""
    groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}
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
            label += "" if last["name"] == "calibrate" else f" +{last['name']}"  # a later step: its own point
            top1 = last["top1"]
            groups.setdefault((label, bool(choice)), []).append((result["size"][kind], top1))
    return [
        MeasuredPoint(
            statistics.fmean(s for s, _ in pairs), statistics.fmean(t for _, t in pairs), label, mixed
        )
        for (label, mixed), pairs in sorted(groups.items())
    ]
