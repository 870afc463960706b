"""One dfq run as plain functions: teacher -> samples -> quantized student -> metrics.

`run` is what the Hydra entry point calls; every stage it chains is usable from Python alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Subset, TensorDataset

from dfq.config import CalibrateConfig, RunConfig, validate
from dfq.dashboard import log_final
from dfq.data.sample_set import SampleSet
from dfq.data.source import DataSource
from dfq.distributed import launch
from dfq.errors import UserError
from dfq.evaluate import top1
from dfq.models.load import ModelEntry, build_model, normalization_from
from dfq.quant.bn import fold_batchnorm
from dfq.quant.export import export_quantized
from dfq.quant.mixed_precision import MixedPrecisionConfig, choose_bits, model_size, save_choice
from dfq.quant.mixed_precision.plan import CHOICE_RECORD
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.record import log_sample_grid, record, save_grid
from dfq.samples import make_samples
from dfq.steps import STEPS, StepContext, calibrate_step, run_steps
from dfq.synthesis.batches import SYNTHESIS_TIME
from dfq.synthesis.generators import GeneratorConfig

log = logging.getLogger(__name__)


def load_teacher(model_cfg: DictConfig, data: DataSource) -> ModelEntry:
    """Build the zoo entry; a model trained on first use is trained on the data set's train split."""
    train_fn = None
    if model_cfg.get("train_if_missing"):
        trainer = hydra.utils.instantiate(model_cfg.train_if_missing)
        normalization = normalization_from(model_cfg.input)

        def train_fn(module: nn.Module, path: str) -> nn.Module:
            return trainer(module, data.split("train", normalization), path)

    return build_model(model_cfg, train_fn)


def prepare_student(
    teacher: nn.Module,
    samples: SampleSet,
    policy: QuantPolicy,
    fold_bn: bool,
    mixed_precision: MixedPrecisionConfig | None = None,
) -> tuple[nn.Module, nn.Module, dict[str, Any] | None]:
    """The quantized copy of `teacher` every student step starts from, the float network it was
    quantized from (the teacher, or a BN-folded copy when asked), and the mixed-precision choice of
    per-layer widths made on that network (None: the policy's widths as they are)."""
    base = fold_batchnorm(teacher) if fold_bn else teacher  # a copy: the teacher keeps its BN
    policy, choice = choose_bits(base, samples.x, policy, mixed_precision or MixedPrecisionConfig())
    return quantize(base, policy, samples.x[:2]), base, choice


def compress(
    teacher: nn.Module,
    samples: SampleSet,
    policy: QuantPolicy,
    calibration: CalibrateConfig,
) -> nn.Module:
    """Quantized copy of `teacher`, calibrated on (the first `calibration.num_samples` of) `samples`."""
    student, _, _ = prepare_student(teacher, samples, policy, calibration.fold_bn)
    return calibrate_step(student, calibration, StepContext(teacher, samples))


def limit(dataset: TensorDataset, max_samples: int | None) -> TensorDataset | Subset:
    """The first `max_samples` of a split (all when None): a bounded evaluation cost."""
    return Subset(dataset, range(min(max_samples, len(dataset)))) if max_samples else dataset


def evaluate_source(
    teacher: ModelEntry,
    samples: SampleSet,
    config: RunConfig,
    test: Any,
    trainer_options: dict[str, Any],
    out_dir: Path | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Run the student's steps (`config.student.steps`) on `samples`: the test accuracy after each
    (`ptq_top1`, `qat_top1`, ...), each step's record (`steps`), the student's `size`, and the
    `mixed_precision` choice when one was made (`config.mixed_precision`).

    With `out_dir`: the steps' checkpoints below it (a rerun resumes), and the final student exported
    to `out_dir/quantized.pt` + `.json` (`python -m dfq.evaluate` reads it), with the mixed-precision
    widths, report and Pareto plot, unless `export` is False (ranks other than 0).
    """
    # the random draws of the steps (observers subsampling large layers, sensitivity probes) start
    # from the run's seed: the student depends on the samples and the config only, not on whether
    # the samples were just made or read from the cache, nor on the sources evaluated before
    pl.seed_everything(config.seed, workers=True, verbose=False)
    quant, fold_bn = config.quant, config.calibrate.fold_bn
    student, base, choice = prepare_student(teacher.module, samples, quant, fold_bn, config.mixed_precision)
    context = StepContext(teacher.module, samples, trainer_options, out_dir, config.speed, base)
    options = functools.partial(getattr, config)
    student, records = run_steps(
        student, config.student.steps, options, context, test, config.evaluate.batch_size
    )
    result = {STEPS[record["name"]].metric: record["top1"] for record in records} | {"steps": records}
    result["size"] = model_size(student, samples.x[:1])
    if choice:
        result["mixed_precision"] = {key: value for key, value in choice.items() if key in CHOICE_RECORD}
    if out_dir and export:
        export_quantized(student, out_dir / "quantized.pt", {"model": teacher.name})
        if choice:
            save_choice(choice, out_dir, result["size"], records[-1]["top1"])
    return result


TABLE_COLUMNS = {"ptq_top1": "calibrated", "reconstruct_top1": "reconstructed", "qat_top1": "fine-tuned"}


SIZE_COLUMNS = {"avg w bits": ("avg_weight_bits", "{:.2f}"), "weight bytes": ("weight_bytes", "{:.0f}")}
SIZE_COLUMNS |= {"BOPs/sample": ("bops", "{:.3g}")}


def format_table(metrics: dict[str, Any]) -> str:
    """The short table a run prints: accuracy per data source after calibration, reconstruction (when
    a source was reconstructed) and fine-tuning, and the final student's size."""
    bits = f"W{metrics['w_bits']}A{metrics['a_bits']}"
    shown = [key for key in TABLE_COLUMNS if key != "reconstruct_top1"]
    if any("reconstruct_top1" in result for result in metrics["sources"].values()):
        shown.insert(1, "reconstruct_top1")
    headers = [f"{bits} {TABLE_COLUMNS[key]}" for key in shown] + list(SIZE_COLUMNS)
    widths = [max(18, len(header) + 3) for header in headers[: len(shown)]] + [14] * len(SIZE_COLUMNS)
    mixed = [r["mixed_precision"]["options"] for r in metrics["sources"].values() if "mixed_precision" in r]
    setting = bits  # with mixed precision, the bits are the default width; the chosen ones differ per layer
    if mixed:
        setting += f" mixed precision ({', '.join(f'{k}={v}' for k, v in mixed[0].items())})"
    lines = [
        f"dfq: {metrics['model']} {setting} ({metrics['protocol']}), {metrics['num_samples']} samples, "
        f"test top-1 % on {metrics['test_samples']} images",
        f"{'data source':<22}" + "".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True)),
    ]
    for name, result in metrics["sources"].items():
        cells = ["-" if result.get(key) is None else f"{result[key]:.2f}" for key in shown]
        size = result.get("size", {})
        cells += ["-" if key not in size else form.format(size[key]) for key, form in SIZE_COLUMNS.values()]
        lines.append(f"{name:<22}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    lines.append(f"{'full precision':<22}{metrics['fp_top1']:>{widths[0]}.2f}")
    return "\n".join(lines)


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """Lightning Trainer options from the `trainer` group, with the configured logger attached."""
    accelerator = cfg.trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu, or "
            "trainer.accelerator=cpu trainer.precision=32-true (with trainer=ddp: gloo processes on the CPU)"
        )
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    return {"logger": logger, "enable_progress_bar": False, **cfg.trainer}


def sample_path(config: RunConfig, teacher: ModelEntry, recipe: GeneratorConfig, run_dir: Path) -> Path:
    """Where a source's samples live: in the shared cache under a digest of model and recipe (so runs
    that differ only in quantization reuse them), or in the run directory when caching is off."""
    if not config.paths.sample_cache:
        return run_dir / "samples" / f"{recipe.name}.pt"
    key = json.dumps([teacher.name, recipe.identity()], sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(config.paths.sample_cache) / teacher.name / f"{recipe.name}-{digest}.pt"


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The whole pipeline for a composed config; writes artefacts into `run_dir`, returns metrics."""
    start = time.time()
    config = validate(cfg)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    run_dir = Path(run_dir)
    options = trainer_options(cfg)
    data: DataSource = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    test = limit(data.split("test", teacher.normalization), config.evaluate.max_samples)
    world = launch(options)  # trainer=ddp: from here on, one process per device
    sources = {config.generator.name: config.generator, **config.compare}
    results = {}
    for name, recipe in sources.items():
        log.info("data source %s: %d samples from %s", name, recipe.num_samples, recipe.source)
        path = sample_path(config, teacher, recipe, run_dir)
        samples = make_samples(teacher, recipe, data, path, options, config.speed, world)
        if world.is_zero:
            save_grid(samples, teacher.normalization, run_dir / f"samples_{name}.png")
            log_sample_grid(options.get("logger"), samples, teacher.normalization, f"samples/{name}")
        out_dir = run_dir / "students" / name
        results[name] = evaluate_source(teacher, samples, config, test, options, out_dir, world.is_zero)
        if samples.meta.get(SYNTHESIS_TIME) is not None:  # the set's own time, cached or made now
            results[name][SYNTHESIS_TIME] = samples.meta[SYNTHESIS_TIME]
    main = results[config.generator.name]
    metrics = {
        "model": teacher.name,
        "generator": config.generator.name,
        "protocol": config.quant.protocol,
        "w_bits": config.quant.w_bits,
        "a_bits": config.quant.a_bits,
        "num_samples": config.generator.num_samples,
        "test_samples": len(test),
        "fp_top1": top1(teacher.module, test, config.evaluate.batch_size),
        "q_top1": main.get("qat_top1", main["ptq_top1"]),
        "sources": results,
        "seed": config.seed,
        "wall_time_s": round(time.time() - start, 1),
    }
    if world.is_zero:
        record(run_dir, metrics, cfg)
        log_final(options["logger"], metrics, cfg)
        print(format_table(metrics), flush=True)
    return metrics
