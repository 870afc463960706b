"""The Pareto picture of mixed precision: size against summed sensitivity along the frontier, with
the measured top-1 of chosen points (and of uniform widths, for comparison) on a second axis."""

from __future__ import annotations

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
