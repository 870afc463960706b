"""Run directories -> comparable result tables (CSV, markdown) and an accuracy-vs-bits plot.

Each run directory holds `metrics.json` and the resolved `config.yaml` (dfq.record). One result is one
data source of one run; results that share every protocol field are aggregated over seeds (mean and
sample standard deviation), so a number is only ever averaged with numbers measured the same way.
A CSV written here keeps each row's seeds, means and standard deviations, so it can be read back and
merged with new runs (more seeds, more rows) without the run directories it came from.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from dfq.config import compose_config
from dfq.distill.module import FinetuneConfig
from dfq.errors import UserError
from dfq.io import atomic_path, save_png
from dfq.quant.observers import own_options
from dfq.quant.reconstruct import ReconstructConfig
from dfq.steps import STEPS
from dfq.synthesis.batches import SYNTHESIS_TIME
from dfq.synthesis.generators import GeneratorConfig, weights_of

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
CALIBRATION_ONLY = "calibrate"  # the steps of a calibration-only (PTQ) result
# what a run's steps were before metrics.json held step records (read from its config.yaml), and
# what a table written before them holds in their place
LEGACY_OPTIONS = {
    "calibrate": ("fold_bn", "bn_reestimate", "bias_correction"),
    "distill": ("epochs", "grad_clip"),
}
# step options added after runs recorded their steps, with the value (the default) every earlier run had
ADDED_OPTIONS = {
    "reconstruct": {
        field.name: field.default
        for field in fields(ReconstructConfig)
        if field.name in ("copies", "copy_padding")
    },
    "distill": {
        field.name: field.default
        for field in fields(FinetuneConfig)
        if field.name
        in ("distill_weight", "label_filter", "label_threshold", "cam_weight", "low_pass", "hard_step")
    },
}


class ResultsError(UserError):
    """A run directory whose files cannot be read as a dfq run."""


Options = tuple[tuple[str, str], ...]  # sorted (`<step>.<option>`, value as text)


@dataclass(frozen=True)
class Result:
    """The top-1 of one data source in one run, with every field that decides what it compares to."""

    experiment: str
    model: str
    data_source: str
    w_bits: int
    a_bits: int
    first_last_bits: str
    granularity: str
    symmetry: str
    observer: str
    placement: str
    protocol: str
    steps: str  # the student's steps that ran, e.g. `calibrate+distill` (dfq.steps)
    num_samples: int
    iterations: int
    pad_crop: int  # the synthesis crops' padding (generator.pad_crop): it changes the samples
    test_samples: int
    options: Options  # every option of every step, from the step records: one column each
    seed: int
    fp_top1: float
    top1: float
    ptq_top1: float
    wall_time_s: float  # the whole run
    student_time_s: float | None  # this source's student steps (None: a run without step records)
    synthesis_time_s: float | None  # the optimization of its samples, cached or not (None: not synthesized
    # or made before it was recorded)
    weight_bytes: float | None  # the student's weight memory (dfq.quant.mixed_precision.model_size)
    bops: float | None  # and its bit-operations per sample (None: a run from before they were recorded)


# averaged over the runs that record them
RECORDED = ("student_time_s", "synthesis_time_s", "weight_bytes", "bops")
MEASURED = ("seed", "fp_top1", "top1", "ptq_top1", "wall_time_s", *RECORDED)
PROTOCOL = tuple(f.name for f in fields(Result) if f.name not in MEASURED)
FIXED = tuple(name for name in PROTOCOL if name != "options")  # the protocol columns every table has
SECTION = ("experiment", "model", "first_last_bits", "granularity", "symmetry", "observer", "placement")
SECTION += ("protocol", "num_samples", "test_samples")
SUMMARY_COLUMNS = (*FIXED, "seeds", "seed_list", "fp_top1", "top1_mean", "top1_std")
SUMMARY_COLUMNS += ("ptq_top1_mean", "ptq_top1_std", "wall_time_s", *RECORDED)  # then the options
# Columns that tables written before them lack, with the value all of their runs had
ADDED_COLUMNS = {"pad_crop": "0"} | dict.fromkeys(RECORDED, "")
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


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Every directory under `roots` that holds a metrics.json, sorted."""
    runs: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            raise ResultsError(f"results folder not found: {root}")
        runs.update(path.parent for path in root.rglob("metrics.json"))
    return sorted(runs)


WIDTH_LABELS = {"w_bits": "w", "a_bits": "a"}  # how a per-layer override's keys read in a table


def layer_widths(quant: DictConfig) -> str:
    """The widths some layers take apart from the target bits: `first_last_bits` and each per-layer
    override, e.g. `@0(w8,a32) @-1(w8,a8)` for quant=qdrop; `same` when no layer differs."""
    parts = [] if quant.first_last_bits is None else [str(quant.first_last_bits)]
    for name, spec in (quant.get("overrides") or {}).items():
        labels = (f"{WIDTH_LABELS[k]}{v}" if k in WIDTH_LABELS else f"{k}={v}" for k, v in spec.items())
        widths = ",".join(labels)
        parts.append(f"{name}({widths})")
    return " ".join(parts) or "same"


def both_quantizers(quant: DictConfig, describe) -> str:
    """`w:<weights> a:<activations>` for one property of the two quantizer templates."""
    return f"w:{describe(quant.weight)} a:{describe(quant.activation)}"


def observer_name(spec: DictConfig) -> str:
    """An observer with the options it takes, e.g. `percentile(99.99)` (a preset's percentile is not
    shown on `mse`, which ignores it)."""
    options = own_options(spec.observer, spec.get("observer_options") or {})
    return f"{spec.observer}({','.join(str(v) for v in options.values())})" if options else str(spec.observer)


def option_text(value: Any) -> str:
    """A step option's value as table text (JSON for lists and mappings)."""
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def option_column(step: str, option: str) -> str:
    """`<step>.<option>`; a step's `method` is the column named after the step (`reconstruct`)."""
    return step if option == "method" else f"{step}.{option}"


def record_options(records: Sequence[dict[str, Any]]) -> Options:
    """Every option of every step record, keyed by `option_column`, sorted; a step's bookkeeping
    (its seed, resuming) is left out even where an older record holds it, so seeds aggregate."""

    def bookkeeping(name: str) -> tuple[str, ...]:
        return STEPS[name].bookkeeping if name in STEPS else ()

    pairs = (
        (option_column(record["name"], key), option_text(value))
        for record in records
        for key, value in record["options"].items()
        if key not in bookkeeping(record["name"])
    )
    return tuple(sorted(pairs))


def with_added_options(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step records with the options added since they were written, at the value they had then."""
    return [
        record | {"options": ADDED_OPTIONS.get(record["name"], {}) | record["options"]} for record in records
    ]


def legacy_records(cfg: DictConfig, accuracy: dict[str, Any]) -> list[dict[str, Any]]:
    """The step records of a run from before metrics.json held them, rebuilt from its config.yaml with
    the options the collector read then (calibration corrections, fine-tuning epochs and clipping)."""
    calibration = {name: bool(OmegaConf.select(cfg, f"calibrate.{name}", default=False))
                   for name in LEGACY_OPTIONS["calibrate"]}  # fmt: skip
    records = [{"name": "calibrate", "options": calibration, "top1": accuracy["ptq_top1"]}]
    if bool(cfg.finetune.enabled) and int(cfg.finetune.epochs) > 0 and "qat_top1" in accuracy:
        tuning = {"epochs": int(cfg.finetune.epochs), "grad_clip": cfg.finetune.get("grad_clip")}
        records.append({"name": "distill", "options": tuning, "top1": accuracy["qat_top1"]})
    return records


def source_recipe(cfg: DictConfig, source: str) -> DictConfig:
    """The generator node that produced data source `source`: the main generator or a compare entry."""
    if cfg.generator.name == source:
        return cfg.generator
    recipe = OmegaConf.select(cfg, f"compare.{source}")
    if recipe is None:
        raise ResultsError(f"data source {source!r} is neither generator nor compare.{source} in the config")
    return recipe


def read_run(run_dir: str | Path) -> list[Result]:
    """The results of one run directory, one per data source."""
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        cfg = OmegaConf.load(run_dir / "config.yaml")
        return run_results(run_dir, metrics, cfg)
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise ResultsError(f"{run_dir} is not a complete dfq run: {error!r}") from error


def run_results(run_dir: Path, metrics: dict[str, Any], cfg: DictConfig) -> list[Result]:
    """One Result per data source of a run: its student's steps and their options from the step
    records in metrics.json, the quantization protocol and sample recipe from the resolved config."""
    quant = cfg.quant
    common = {
        "experiment": str(cfg.get("experiment") or cfg.get("task_name") or run_dir.parent.name),
        "model": metrics["model"],
        "w_bits": int(metrics["w_bits"]),
        "a_bits": int(metrics["a_bits"]),
        "first_last_bits": layer_widths(quant),
        "granularity": both_quantizers(quant, lambda spec: spec.granularity),
        "symmetry": both_quantizers(quant, lambda spec: "sym" if spec.symmetric else "asym"),
        "observer": both_quantizers(quant, observer_name),
        "placement": str(quant.placement) + ("+residual" if quant.get("quantize_residual") else ""),
        "protocol": str(metrics["protocol"]),
        "test_samples": int(metrics["test_samples"]),
        "seed": int(metrics["seed"]),
        "fp_top1": float(metrics["fp_top1"]),
        "wall_time_s": float(metrics["wall_time_s"]),
    }
    results = []
    for source, accuracy in metrics["sources"].items():
        recipe = source_recipe(cfg, source)
        records = (
            with_added_options(accuracy["steps"]) if "steps" in accuracy else legacy_records(cfg, accuracy)
        )
        synthesized = recipe.get("source") == "synthesis"
        results.append(
            Result(
                **common,
                data_source=source,
                steps="+".join(record["name"] for record in records),
                num_samples=int(recipe.num_samples),
                iterations=int(recipe.get("iterations") or 0) if synthesized else 0,
                pad_crop=int(recipe.get("pad_crop") or 0) if synthesized else 0,
                options=record_options([*recipe_records(recipe), *precision_records(accuracy), *records]),
                top1=float(records[-1]["top1"]),
                ptq_top1=float(records[0]["top1"]),
                student_time_s=student_time(records),
                synthesis_time_s=accuracy.get(SYNTHESIS_TIME),
                weight_bytes=accuracy.get("size", {}).get("weight_bytes"),
                bops=accuracy.get("size", {}).get("bops"),
            )
        )
    return results


# generator fields with columns of their own, or that do not change the samples
RECIPE_COLUMNS = ("name", "source", "num_samples", "iterations", "pad_crop", "seed", "log_every")


@functools.cache
def preset_recipe(name: str) -> dict[str, Any]:
    """Generator preset `name` as dfq composes it today (conf/generator/), or the recipe defaults
    where no preset has that name."""
    try:
        return OmegaConf.to_container(compose_config([f"generator={name}"]).generator, resolve=True)
    except ConfigCompositionException:
        return dataclasses.asdict(GeneratorConfig())


def recipe_records(recipe: DictConfig) -> list[dict[str, Any]]:
    """The generator options in which a source's recipe differs from its preset, as a record (columns
    `generator.<option>`), so runs of one preset with other options are never averaged together;
    none when it is the preset as it is. An option the run's config lacks predates it: the default."""
    preset = dict(preset_recipe(str(recipe.name)))
    own = OmegaConf.to_container(recipe, resolve=True)
    for options in (preset, own):
        if "losses" in options:
            options["losses"] = weights_of(options["losses"])
    changed = {
        key: value
        for key, value in own.items()
        if key not in RECIPE_COLUMNS and (key not in preset or value != preset[key])
    }
    return [{"name": "generator", "options": changed}] if changed else []


def precision_records(accuracy: dict[str, Any]) -> list[dict[str, Any]]:
    """The mixed-precision choice of a source as a record (its columns: `mixed_precision`,
    `mixed_precision.budget`, ...); none for one width for all."""
    choice = accuracy.get("mixed_precision")
    return [{"name": "mixed_precision", "options": choice["options"]}] if choice else []


def student_time(records: Sequence[dict[str, Any]]) -> float | None:
    """The summed wall time of a source's steps: what its student cost, synthesis and evaluation of
    the teacher aside (None for records rebuilt from a run without step records)."""
    times = [record.get("wall_time_s") for record in records]
    return None if None in times else float(sum(times))


def collect(roots: Iterable[str | Path]) -> list[Result]:
    """The results of every run under `roots`."""
    return [result for run in find_runs(roots) for result in read_run(run)]


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


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The aggregated rows as CSV (empty std for a single seed; an option a row does not record is
    empty), written atomically."""
    columns = [*SUMMARY_COLUMNS, *option_columns(rows)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})


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
