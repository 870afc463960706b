"""Run directories -> results: one `Result` per data source of each run, read from its `metrics.json`
(the step records) and resolved `config.yaml` (the quantization protocol and the sample recipe)."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from dfq.config import compose_config
from dfq.distill.module import FinetuneConfig
from dfq.errors import UserError
from dfq.quant.observers import own_options
from dfq.quant.reconstruct import ReconstructConfig
from dfq.steps import STEPS
from dfq.synthesis.batches import SYNTHESIS_TIME
from dfq.synthesis.generators import GeneratorConfig, weights_of

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
