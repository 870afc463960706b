"""One dfq run as plain functions: teacher -> samples -> quantized student -> metrics.

`run` is what the Hydra entry point calls; every stage it chains is usable from Python alone.
"""

from __future__ import annotations

import dataclasses
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
from torch.utils.data import Subset, TensorDataset, default_collate

from dfq.config import CalibrateConfig, RunConfig, validate
from dfq.dashboard import log_final
from dfq.data.source import DataSource
from dfq.data.synthetic import read_samples
from dfq.distill.distill import distill
from dfq.distill.module import FinetuneConfig
from dfq.distributed import World, launch
from dfq.errors import UserError
from dfq.evaluate import top1
from dfq.models.load import ModelEntry, build_model, normalization_from
from dfq.quant.bn import fold_batchnorm
from dfq.quant.calibrate import calibrate
from dfq.quant.export import export_quantized
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.record import log_sample_grid, record, save_grid
from dfq.speed import SpeedConfig
from dfq.synthesis.generators import GeneratorConfig
from dfq.synthesis.store import SampleSet
from dfq.synthesize import sample_metadata, synthesize

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


def draw_real(teacher: ModelEntry, recipe: GeneratorConfig, data: DataSource) -> SampleSet:
    """`recipe.num_samples` images drawn at random (seeded) from the real training split."""
    train = data.split("train", teacher.normalization)
    count = len(train)
    if recipe.num_samples > count:
        raise ValueError(f"generator.num_samples={recipe.num_samples} exceeds the {count} training images")
    pick = torch.randperm(count, generator=torch.Generator().manual_seed(recipe.seed))[: recipe.num_samples]
    if isinstance(train, TensorDataset):
        x, y = (tensor[pick].clone() for tensor in train.tensors)
    else:  # a lazily decoded set (image folders): decode only the picked images
        x, y = default_collate([train[int(i)] for i in pick])
    return SampleSet(x, y, sample_metadata(teacher, recipe))


def real_source(
    teacher: ModelEntry, recipe: GeneratorConfig, data: DataSource, path, options, speed=None, world=None
) -> SampleSet:
    """Real training images (`source: real`), saved to `path` when given."""
    samples = draw_real(teacher, recipe, data)
    if path:
        samples.save(path)
    return samples


def saved_source(
    teacher: ModelEntry, recipe: GeneratorConfig, data: DataSource, path, options, speed=None, world=None
) -> SampleSet:
    """A set saved earlier (`source: saved`, `generator.path`), checked to fit the teacher; the part
    used is written to `path` when given, like every source's samples."""
    samples = read_samples(recipe.path, teacher.normalization, teacher.name, recipe.num_samples)
    if path and Path(path).resolve() != Path(recipe.path).resolve():
        samples.save(path)
    return samples


def synthesis_source(
    teacher: ModelEntry, recipe: GeneratorConfig, data: DataSource, path, options, speed=None, world=None
) -> SampleSet:
    """Inputs optimized against the teacher (`source: synthesis`), resumable through `path`."""
    return synthesize(teacher, recipe, path, options, speed, world)


SAMPLE_SOURCES = {"synthesis": synthesis_source, "real": real_source, "saved": saved_source}


def make_samples(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    data: DataSource,
    path: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
    speed: SpeedConfig | None = None,
    world: World | None = None,
) -> SampleSet:
    """Samples from the recipe's source (a `SAMPLE_SOURCES` entry): synthesized from the teacher (split
    across the ranks of `world`), real training images, or a saved set."""
    return SAMPLE_SOURCES[recipe.source](teacher, recipe, data, path, trainer_options, speed, world)


def compress(
    teacher: nn.Module,
    samples: SampleSet,
    policy: QuantPolicy,
    calibration: CalibrateConfig,
) -> nn.Module:
    """Quantized copy of `teacher`, calibrated on (the first `calibration.num_samples` of) `samples`."""
    x = samples.first(calibration.num_samples, "calibrate.num_samples").x
    base = fold_batchnorm(teacher) if calibration.fold_bn else teacher  # a copy: the teacher keeps its BN
    student = quantize(base, policy, x[:2])
    return calibrate(
        student, x, calibration.batch_size, calibration.bn_reestimate, calibration.bias_correction
    )


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
) -> dict[str, float]:
    """Calibrate and (optionally) distill a student on `samples`; its test accuracy after each.

    With `out_dir`: distillation checkpoints in `out_dir/checkpoints` (a rerun resumes), and the final
    student exported to `out_dir/quantized.pt` + `.json` (`python -m dfq.evaluate` reads it) unless
    `export` is False (ranks other than 0).
    """
    student = compress(teacher.module, samples, config.quant, config.calibrate)
    result = {"ptq_top1": top1(student, test, config.evaluate.batch_size)}
    finetune: FinetuneConfig = config.finetune
    if finetune.active:
        tuning = samples.first(finetune.num_samples, "finetune.num_samples")
        labels = tuning.y if finetune.label_weight else None
        checkpoints = out_dir / "checkpoints" if out_dir else None
        distill(
            student, teacher.module, tuning.x, finetune, labels, trainer_options, checkpoints, config.speed
        )
        result["qat_top1"] = top1(student, test, config.evaluate.batch_size)
    if out_dir and export:
        export_quantized(student, out_dir / "quantized.pt", {"model": teacher.name})
    return result


def format_table(metrics: dict[str, Any]) -> str:
    """The short table a run prints: accuracy per data source after calibration and fine-tuning."""
    bits = f"W{metrics['w_bits']}A{metrics['a_bits']}"
    lines = [
        f"dfq: {metrics['model']} {bits} ({metrics['protocol']}), {metrics['num_samples']} samples, "
        f"test top-1 % on {metrics['test_samples']} images",
        f"{'data source':<22}{bits + ' calibrated':>18}{bits + ' fine-tuned':>18}",
    ]
    for name, result in metrics["sources"].items():
        qat = result.get("qat_top1")
        lines.append(f"{name:<22}{result['ptq_top1']:>18.2f}{'-' if qat is None else f'{qat:.2f}':>18}")
    lines.append(f"{'full precision':<22}{metrics['fp_top1']:>18.2f}")
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
    key = json.dumps([teacher.name, dataclasses.asdict(recipe)], sort_keys=True, default=str)
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
