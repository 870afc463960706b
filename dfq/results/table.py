"""Results -> table rows: results that share every protocol field are aggregated over seeds (mean and
sample standard deviation), so a number is only ever averaged with numbers measured the same way. A
CSV written here keeps each row's seeds, means and standard deviations, so it can be read back and
merged with new runs (more seeds, more rows) without the run directories it came from.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dfq.io import atomic_path
from dfq.results.runs import (
    ADDED_OPTIONS,
    CALIBRATION_ONLY,
    FIXED,
    LEGACY_OPTIONS,
    PROTOCOL,
    RECORDED,
    Result,
    ResultsError,
    option_column,
    option_text,
)
from dfq.steps import STEPS

SOURCE_ORDER = (
    "real",
    "gaussian",
    "inception",
    "inception_uncapped",
    "bn_stats",
    "bn_stats_tv",
    "bn_stats_inception",
    "zeroq",
    "deepinversion",
)
SUMMARY_COLUMNS = (*FIXED, "seeds", "seed_list", "fp_top1", "top1_mean", "top1_std")
SUMMARY_COLUMNS += ("ptq_top1_mean", "ptq_top1_std", "wall_time_s", *RECORDED)  # then the options
# Columns that tables written before them lack, with the value all of their runs had
ADDED_COLUMNS = {"pad_crop": "0"} | dict.fromkeys(RECORDED, "")


def sort_key(row: dict[str, Any]) -> tuple:
    """Experiment, model, data source in the tables' order, PTQ before QAT, more bits first."""
    source = row["data_source"]
    rank = SOURCE_ORDER.index(source) if source in SOURCE_ORDER else len(SOURCE_ORDER)
    return (
        row["experiment"],
        row["model"],
        rank,
        source,
        *steps_rank(row["steps"]),
        -row["w_bits"],
        -row["a_bits"],
    )


def steps_rank(steps: str) -> tuple[int, str]:
    """Calibration only first, then by the number of steps after it."""
    return steps.count("+"), steps


@dataclass(frozen=True)
class Tally:
    """What one protocol's runs measured: their seeds (one run each), and the mean and sum of squared
    deviations of top-1, final and after calibration; two tallies merge exactly (Chan et al.'s update)."""

    seeds: frozenset[int]
    top1: tuple[float, float]  # mean, sum of squared deviations from it
    ptq_top1: tuple[float, float]
    fp_top1: float  # means
    wall_time_s: float
    recorded: tuple[tuple[float, int], ...]  # per RECORDED name: summed where recorded, and count

    @classmethod
    def of(cls, result: Result) -> Tally:
        return cls(
            frozenset({result.seed}),
            (result.top1, 0.0),
            (result.ptq_top1, 0.0),
            result.fp_top1,
            result.wall_time_s,
            tuple(
                (0.0, 0) if value is None else (value, 1)
                for value in (getattr(result, name) for name in RECORDED)
            ),
        )

    def __add__(self, other: Tally) -> Tally:
        n, m = len(self.seeds), len(other.seeds)

        def moments(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
            delta = b[0] - a[0]
            return a[0] + delta * m / (n + m), a[1] + b[1] + delta**2 * n * m / (n + m)

        def mean(a: float, b: float) -> float:
            return (a * n + b * m) / (n + m)

        return Tally(
            self.seeds | other.seeds,
            moments(self.top1, other.top1),
            moments(self.ptq_top1, other.ptq_top1),
            mean(self.fp_top1, other.fp_top1),
            mean(self.wall_time_s, other.wall_time_s),
            tuple((a[0] + b[0], a[1] + b[1]) for a, b in zip(self.recorded, other.recorded, strict=True)),
        )

    def summary(self) -> dict[str, Any]:
        """The measured columns of a table row."""
        n = len(self.seeds)

        def std(moments: tuple[float, float]) -> float | None:
            return math.sqrt(moments[1] / (n - 1)) if n > 1 else None

        return {
            "seeds": n,
            "seed_list": " ".join(map(str, sorted(self.seeds))),
            "fp_top1": self.fp_top1,
            "top1_mean": self.top1[0],
            "top1_std": std(self.top1),
            "ptq_top1_mean": self.ptq_top1[0],
            "ptq_top1_std": std(self.ptq_top1),
            "wall_time_s": self.wall_time_s,
        } | {
            name: total / count if count else None
            for name, (total, count) in zip(RECORDED, self.recorded, strict=True)
        }


def merge(tallies: dict[tuple, Tally], key: tuple, tally: Tally) -> None:
    """Add `tally` to the one of its protocol; a seed measured twice is an error, not a second sample."""
    previous = tallies.get(key)
    if previous is None:
        tallies[key] = tally
        return
    twice = previous.seeds & tally.seeds
    if twice:
        row = dict(zip(PROTOCOL, key, strict=True))
        raise ResultsError(
            f"seed {sorted(twice)} of {row['experiment']} {row['data_source']} {column_name(column(row))} "
            "is measured twice: pass each run (or a table that holds it) only once"
        )
    tallies[key] = previous + tally


def aggregate(results: Sequence[Result], tables: Sequence[dict[tuple, Tally]] = ()) -> list[dict[str, Any]]:
    """One row per protocol (every field but the seed and the measurements): mean and std over seeds,
    the runs' results merged with the rows of earlier `tables` (`read_table`)."""
    tallies: dict[tuple, Tally] = {}
    for table in tables:
        for key, tally in table.items():
            merge(tallies, key, tally)
    for result in results:
        merge(tallies, tuple(getattr(result, name) for name in PROTOCOL), Tally.of(result))
    rows = [protocol_row(key) | tally.summary() for key, tally in tallies.items()]
    return sorted(rows, key=sort_key)


def protocol_row(key: tuple) -> dict[str, Any]:
    """A protocol key as row fields: the fixed columns, `options` (the pairs), and each option as a
    column of its own."""
    row = dict(zip(PROTOCOL, key, strict=True))
    return row | dict(row["options"])


def option_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every step option some row records, sorted."""
    return sorted({name for row in rows for name, _ in row["options"]})


FIELD_TYPES = {"int": int, "float": float, "str": str}
TYPES = {f.name: FIELD_TYPES[f.type] for f in fields(Result) if f.name in FIXED}  # fixed fields' types


def read_table(path: str | Path) -> dict[tuple, Tally]:
    """The rows of a CSV written by `write_csv`, as tallies to merge with new runs."""
    try:
        with Path(path).open(newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
    except OSError as error:
        raise ResultsError(f"results table not readable: {path} ({error.strerror})") from error
    columns = set(reader.fieldnames or ())
    legacy = "steps" not in columns and columns >= LEGACY_COLUMNS
    missing = set(SUMMARY_COLUMNS) - columns - set(ADDED_COLUMNS) - ({"steps"} if legacy else set())
    if missing:
        raise ResultsError(
            f"{path} is not a results table written by dfq: no column {sorted(missing)} "
            "(a table without seed lists cannot be extended; collect its run directories instead)"
        )
    try:
        keys = [protocol_key(legacy_row(row)) if legacy else protocol_key(row, ADDED_OPTIONS) for row in rows]
        return {key: table_tally(row, path) for key, row in zip(keys, rows, strict=True)}
    except ValueError as error:
        raise ResultsError(f"{path} holds a value that is not a number where one belongs: {error}") from error


# the columns that tables written before step records had in place of `steps` and the option columns
LEGACY_COLUMNS = {"calibration", "mode", "epochs", "grad_clip"}


def legacy_row(row: dict[str, str]) -> dict[str, str]:
    """A row of a table written before step records, in today's columns: the same steps and options
    that `legacy_records` rebuilds from such a run's config."""
    corrections = set(row["calibration"].split("+"))
    new = {f"calibrate.{name}": str(name in corrections) for name in LEGACY_OPTIONS["calibrate"]}
    tuned = row["mode"] == "fine-tuned"
    if tuned:
        clip = row["grad_clip"]
        new |= {"distill.epochs": row["epochs"], "distill.grad_clip": "None" if clip == "none" else clip}
    rest = {key: value for key, value in row.items() if key not in LEGACY_COLUMNS}
    return rest | new | {"steps": "calibrate+distill" if tuned else CALIBRATION_ONLY}


def protocol_key(row: dict[str, str], added: dict[str, dict[str, Any]] | None = None) -> tuple:
    """A CSV row's protocol, typed: the fixed columns (one added after the table was written takes
    the value every run had before it existed), then the option columns the row fills (with `added`,
    the step options added since at their earlier value)."""
    fixed = tuple(TYPES[name](row[name] if name in row else ADDED_COLUMNS[name]) for name in FIXED)
    known = set(SUMMARY_COLUMNS) | set(ADDED_COLUMNS)
    filled = {current_column(name): value for name, value in row.items() if name not in known and value}
    for step in row["steps"].split("+") if added else ():
        earlier = {option_column(step, key): option_text(value) for key, value in added.get(step, {}).items()}
        filled = earlier | filled
    options = tuple(sorted(filled.items()))
    return (*fixed, options)


def current_column(name: str) -> str:
    """An option column as `option_column` names it today (`reconstruct.method` was `reconstruct`'s)."""
    step, _, option = name.partition(".")
    return option_column(step, option) if option else name


def table_tally(row: dict[str, str], path: str | Path) -> Tally:
    """One CSV row back as a tally (its standard deviations back to sums of squared deviations)."""
    seeds = frozenset(int(seed) for seed in row["seed_list"].split())
    if len(seeds) != int(row["seeds"]):
        raise ResultsError(f"{path}: seed_list {row['seed_list']!r} does not hold {row['seeds']} seeds")

    def moments(name: str) -> tuple[float, float]:
        std = row[f"{name}_std"]
        if len(seeds) > 1 and not std:
            raise ResultsError(f"{path}: {name}_std is empty in a row of {len(seeds)} seeds")
        return float(row[f"{name}_mean"]), float(std or 0.0) ** 2 * (len(seeds) - 1)

    return Tally(
        seeds,
        moments("top1"),
        moments("ptq_top1"),
        float(row["fp_top1"]),
        float(row["wall_time_s"]),
        tuple(
            (float(row[name]) * len(seeds), len(seeds)) if row.get(name) else (0.0, 0) for name in RECORDED
        ),
    )


# A table column, as its sort key: rank and name of the steps, -weight bits, -activation bits
# (calibration only first, more bits first)
Column = tuple[int, str, int, int]
Cell = tuple[float, float | None]  # mean, std (None for a single seed)


def column(row: dict[str, Any], steps: str | None = None) -> Column:
    """The table column of a row (or of its result after `steps`), e.g. W4A4 QAT."""
    return (*steps_rank(steps or row["steps"]), -row["w_bits"], -row["a_bits"])


def steps_label(steps: str) -> str:
    """`PTQ` for calibration only, else the labels of the steps after it (`QAT`)."""
    later = steps.split("+")[1:]
    return "+".join(STEPS[name].label if name in STEPS else name for name in later) or "PTQ"


def column_name(key: Column) -> str:
    """`W4A4 QAT`: bits and the student's steps."""
    return f"W{-key[2]}A{-key[3]} {steps_label(key[1])}"


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The aggregated rows as CSV (empty std for a single seed; an option a row does not record is
    empty), written atomically."""
    columns = [*SUMMARY_COLUMNS, *option_columns(rows)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
