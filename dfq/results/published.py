"""Published data-free QAT results beside dfq's, in drops from each paper's own full-precision top-1.

The successors report ResNet-20 on CIFAR-10 from FP baselines of 93.89-94.03 where dfq's is 91.73, so
only the drop compares (../shared/ANCHORS.md, which also gives the protocol: `gdfq` in dfq's terms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfq.errors import UserError
from dfq.io import save_png
from dfq.results.report import markdown_table, row_label
from dfq.results.table import steps_label

BITS = ("W4A4", "W3A3")


@dataclass(frozen=True)
class Published:
    """One method's published top-1 per bit setting, its FP baseline and where the numbers are."""

    method: str
    fp_top1: float
    top1: dict[str, float]
    source: str


# ../shared/ANCHORS.md, "ResNet-20, CIFAR-10": 5,120 synthetic images for SynQ/PLF/HAST, a generator for GDFQ
PUBLISHED: dict[str, tuple[Published, ...]] = {
    "resnet20": (
        Published("SynQ (ICLR 2025)", 93.89, {"W4A4": 92.76, "W3A3": 88.11}, "paper Table 1, 5 seeds"),
        Published("PLF (CVPR 2024)", 94.03, {"W4A4": 92.47, "W3A3": 88.04}, "paper Table 1"),
        Published("HAST (CVPR 2023)", 93.89, {"W4A4": 92.36, "W3A3": 86.34}, "SynQ Table 1 (PLF's: 88.34)"),
        Published("IntraQ (CVPR 2022)", 93.89, {"W4A4": 91.49, "W3A3": 77.07}, "official README"),
        Published("GDFQ (ECCV 2020)", 93.89, {"W4A4": 90.25, "W3A3": 71.10}, "PLF Table 1"),
    )
}


def method_name(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """`dfq, <data source>`, with the options in which its rows differ and, where the rows ran other
    steps, its steps' label (`REC+QAT`): two recipes never share an entry."""
    name = f"dfq, {row_label(row, rows)}"
    return f"{name}, {steps_label(row['steps'])}" if len({r["steps"] for r in rows}) > 1 else name


def drop_rows(rows: Sequence[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """One entry per method: dfq's rows of `model` (one per recipe; results.aggregate rows) first,
    then the published ones; each with {bits: (top-1, std or None, drop)}, FP, seeds and source."""
    if model not in PUBLISHED:
        raise UserError(f"no published results for model {model!r}; known: {sorted(PUBLISHED)}")
    mine = [row for row in rows if row["model"] == model]
    ours: dict[str, dict[str, Any]] = {}
    for row in mine:
        method = method_name(row, mine)
        entry = ours.setdefault(
            method, {"method": method, "fp_top1": float(row["fp_top1"]), "cells": {}, "seeds": {},
                     "source": "this table"},
        )  # fmt: skip
        bits = f"W{row['w_bits']}A{row['a_bits']}"
        std = None if row["top1_std"] in (None, "") else float(row["top1_std"])
        mean = float(row["top1_mean"])
        entry["cells"][bits] = (mean, std, float(row["fp_top1"]) - mean)
        entry["seeds"][bits] = int(row["seeds"])
    if not ours:
        raise UserError(f"the table has no rows of model {model!r}")
    published = [
        {"method": p.method, "fp_top1": p.fp_top1, "seeds": {}, "source": p.source,
         "cells": {bits: (top1, None, p.fp_top1 - top1) for bits, top1 in p.top1.items()}}
        for p in PUBLISHED[model]
    ]  # fmt: skip
    return [*ours.values(), *published]


def drops_markdown(entries: Sequence[dict[str, Any]]) -> str:
    """A markdown table: method, FP, then top-1 and drop per bit setting, seeds and source."""

    def cell(entry: dict[str, Any], bits: str) -> str:
        if bits not in entry["cells"]:
            return "-"
        mean, std, drop = entry["cells"][bits]
        spread = "" if std is None else f" ± {std:.2f}"
        return f"{mean:.2f}{spread} (-{drop:.2f})"

    header = ["method", "FP top-1", *(f"{bits} top-1 (drop)" for bits in BITS), "seeds", "source"]
    body = [
        [e["method"], f"{e['fp_top1']:.2f}", *(cell(e, bits) for bits in BITS),
         "/".join(str(e["seeds"][b]) for b in BITS if b in e["seeds"]) or "-", e["source"]]
        for e in entries
    ]  # fmt: skip
    return "\n".join(markdown_table(header, body)) + "\n"


def plot_drops(entries: Sequence[dict[str, Any]], model: str, path: str | Path) -> None:
    """Grouped bars of the drop from FP per method, one group per bit setting (std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(entries)
    for index, entry in enumerate(entries):
        present = [(x, entry["cells"][bits]) for x, bits in enumerate(BITS) if bits in entry["cells"]]
        axis.bar(
            [x - 0.4 + width * (index + 0.5) for x, _ in present],
            [drop for _, (_, _, drop) in present],
            width,
            yerr=[std or 0.0 for _, (_, std, _) in present],
            capsize=3,
            label=entry["method"],
            color=f"C{index % 10}",
            hatch="" if entry["source"] == "this table" else "//",
        )
    axis.set_xticks(range(len(BITS)), BITS)
    axis.set_ylabel("drop from full precision (points)")
    axis.set_title(f"data-free QAT, CIFAR-10 {model} (hatched: published)")
    axis.legend(fontsize="small")
    save_png(figure, path)
