"""Table rows -> the report: a markdown table per model and protocol (data sources x bit settings), every
row with all its protocol columns, and an accuracy-vs-bits plot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dfq.io import atomic_path, save_png
from dfq.results.runs import CALIBRATION_ONLY, ResultsError, collect
from dfq.results.table import (
    Cell,
    Column,
    aggregate,
    column,
    column_name,
    option_columns,
    read_table,
    steps_rank,
    write_csv,
)

SECTION = ("experiment", "model", "first_last_bits", "granularity", "symmetry", "observer", "placement")
SECTION += ("protocol", "num_samples", "test_samples")
# how a row label names a recipe field in which rows of one data source differ
RECIPE_LABELS = {"iterations": "{} it", "pad_crop": "crop {}"}
MARKDOWN_COLUMNS = {
    "model": "model",
    "fp_top1": "FP top-1",
    "data_source": "data source",
    "bits": "W/A bits",
    "first_last_bits": "first/last bits",
    "granularity": "granularity",
    "symmetry": "symmetry",
    "observer": "observer",
    "placement": "placement",
    "protocol": "protocol",
    "steps": "steps",
    "num_samples": "samples",
    "iterations": "iterations",
    "pad_crop": "crop padding",
    "seeds": "seeds",
    "top1": "top-1 %",
    "wall_time_s": "wall time (s)",
    "student_time_s": "student minutes",
    "synthesis_time_s": "synthesis minutes",
    "weight_bytes": "weights (KiB)",
    "bops": "GBOPs",
}


def accuracy(mean: float, std: float | None) -> str:
    """`mean ± std` (the mean alone for a single seed)."""
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def sections(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped into tables that share model and protocol (rows: data sources, columns: settings)."""
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[name] for name in SECTION), []).append(row)
    return grouped


def differing(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Recipe fields and step options in which `rows` differ (an option counts among the rows of the
    same steps, a row without it as a value of its own)."""
    names = [name for name in RECIPE_LABELS if len({row[name] for row in rows}) > 1]
    for name in option_columns(rows):
        holders = [row for row in rows if name in row]
        alike = [row for row in rows if any(row["steps"] == other["steps"] for other in holders)]
        if len({row.get(name) for row in alike}) > 1:
            names.append(name)
    return names


def row_label(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The data source, with the recipe fields (iterations, crops) and step options (`distill.lr`) in
    which its rows differ."""
    same = [other for other in rows if other["data_source"] == row["data_source"]]
    details = [
        RECIPE_LABELS[name].format(row[name]) if name in RECIPE_LABELS else f"{name} {row.get(name, '-')}"
        for name in differing(same)
        if name in RECIPE_LABELS or any(other["steps"] == row["steps"] and name in other for other in same)
    ]
    return f"{row['data_source']} ({', '.join(details)})" if details else row["data_source"]


def pivot(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[Column], dict[tuple[str, Column], Cell]]:
    """Row labels, columns and cells of one section's table. A row with steps after calibration also
    fills the PTQ column of its bits with its calibrated student's top-1, unless a calibration-only
    row does."""
    cells: dict[tuple[str, Column], Cell] = {}
    labels: list[str] = []
    for row in rows:
        label = row_label(row, rows)
        if label not in labels:
            labels.append(label)
        if row["steps"] != CALIBRATION_ONLY:
            calibrated = column(row, CALIBRATION_ONLY)
            cells.setdefault((label, calibrated), (row["ptq_top1_mean"], row["ptq_top1_std"]))
        cells[(label, column(row))] = (row["top1_mean"], row["top1_std"])
    return labels, sorted({key for _, key in cells}), cells


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def shared_steps(rows: Sequence[dict[str, Any]]) -> str:
    """The section's steps, and the step options every row that records them sets alike."""
    steps = sorted({row["steps"] for row in rows}, key=steps_rank)
    varying = set(differing(rows))
    alike = [f"{name}={rows_value}" for name in option_columns(rows) if name not in varying
             for rows_value in {row[name] for row in rows if name in row}]  # fmt: skip
    text = "steps " + " / ".join(steps)
    return f"{text} ({', '.join(alike)})" if alike else text


def section_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Heading, protocol line and table (data source x setting) of one section."""
    first = rows[0]
    seeds = sorted({row["seeds"] for row in rows})
    bits = first["first_last_bits"]
    if bits == "same":
        first_last = "first/last layers at the target bits"
    elif bits.isdigit():
        first_last = f"first/last layers at {bits} bits"
    else:
        first_last = f"per-layer widths {bits} (@k: k-th layer in graph order)"
    protocol = (
        f"Protocol {first['protocol']}: granularity {first['granularity']}, {first['symmetry']}, "
        f"observers {first['observer']}, activations at {first['placement']}, {first_last}; "
        f"{first['num_samples']} samples per source; {shared_steps(rows)}; top-1 % on "
        f"{first['test_samples']} test images, mean ± std over seeds (seeds per row: "
        f"{'/'.join(map(str, seeds))})."
    )
    labels, columns, cells = pivot(rows)
    body = [
        [label, *(accuracy(*cells[label, key]) if (label, key) in cells else "-" for key in columns)]
        for label in labels
    ]
    header = ["data source", *map(column_name, columns)]
    heading = f"### {first['experiment']}: {first['model']} (FP top-1 {first['fp_top1']:.2f} %)"
    return [heading, "", protocol, "", *markdown_table(header, body), ""]


def long_row(row: dict[str, Any], options: Sequence[str] = ()) -> list[str]:
    """One summary row in the markdown column order, then the given option columns."""
    values = {
        **row,
        "bits": f"W{row['w_bits']}A{row['a_bits']}",
        "fp_top1": f"{row['fp_top1']:.2f}",
        "top1": accuracy(row["top1_mean"], row["top1_std"]),
        "wall_time_s": f"{row['wall_time_s']:.0f}",
        "student_time_s": optional(row["student_time_s"], 60, "{:.1f}"),
        "synthesis_time_s": optional(row.get("synthesis_time_s"), 60, "{:.1f}"),
        "weight_bytes": optional(row.get("weight_bytes"), 1024, "{:.1f}"),
        "bops": optional(row.get("bops"), 1e9, "{:.3f}"),
    }
    return [str(values[name]) for name in MARKDOWN_COLUMNS] + [str(row.get(name, "-")) for name in options]


def optional(value: float | None, unit: float, form: str) -> str:
    """A recorded measurement in `unit`s, or `-` where a row's runs did not record it."""
    return "-" if value is None else form.format(value / unit)


def to_markdown(rows: Sequence[dict[str, Any]], title: str = "Results") -> str:
    """A table per model and protocol, then every aggregated row with all its protocol columns."""
    lines = [f"## {title}", ""]
    for members in sections(rows).values():
        lines += section_markdown(members)
    varying = set(differing(rows))
    options = [name for name in option_columns(rows) if name in varying]
    lines += ["### All rows", ""]
    header = [*MARKDOWN_COLUMNS.values(), *options]
    lines += markdown_table(header, [long_row(row, options) for row in rows])
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Top-1 vs bit setting, one panel per section, one colour per data source: a solid line through
    its calibrated (PTQ) columns, a dashed one through the columns of each later recipe (QAT), as
    PNG. The y axis spans the data (not 0-100), so that sub-point gaps between sources stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(sections(rows).values())
    figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for axis, members in zip(axes[0], groups, strict=True):
        labels, columns, cells = pivot(members)
        for index, label in enumerate(labels):
            legend = label  # one legend entry per data source, on its first line
            for steps in sorted({key[1] for key in columns}, key=steps_rank):
                style = "-" if steps == CALIBRATION_ONLY else "--"
                points = [
                    (x, cells[label, key])
                    for x, key in enumerate(columns)
                    if key[1] == steps and (label, key) in cells
                ]
                if not points:
                    continue
                axis.errorbar(
                    [x for x, _ in points],
                    [mean for _, (mean, _) in points],
                    yerr=[std or 0.0 for _, (_, std) in points],
                    color=f"C{index % 10}",
                    linestyle=style,
                    marker="o",
                    capsize=3,
                    label=legend,
                )
                legend = None
        axis.axhline(members[0]["fp_top1"], color="grey", linestyle="--", label="full precision")
        axis.set_xticks(range(len(columns)), [column_name(key) for key in columns], rotation=30)
        axis.set_xlim(-0.5, len(columns) - 0.5)
        axis.set_ylabel("test top-1 %")
        axis.set_xlabel("solid: calibrated only (PTQ); dashed: later steps (QAT, ...)")
        axis.set_title(f"{members[0]['experiment']}: {members[0]['model']}")
        axis.legend(fontsize="small")
    save_png(figure, path)


def write_report(roots: Iterable[str | Path], prefix: str | Path, title: str = "Results") -> dict[str, Path]:
    """Collect every run under `roots` (folders) and the rows of earlier tables among them (`.csv` files
    this module wrote); write `<prefix>.csv`, `.md` and `.png`; return their paths."""
    roots = [Path(root) for root in roots]
    tables = [read_table(root) for root in roots if root.suffix == ".csv"]
    folders = [root for root in roots if root.suffix != ".csv"]
    results = collect(folders)
    if not results and not any(tables):
        raise ResultsError(f"no run directories (with metrics.json) under {', '.join(map(str, roots))}")
    rows = aggregate(results, tables)
    prefix = Path(prefix)
    paths = {kind: prefix.with_name(f"{prefix.name}.{kind}") for kind in ("csv", "md", "png")}
    write_csv(rows, paths["csv"])
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(to_markdown(rows, title))
    plot(rows, paths["png"])
    return paths
