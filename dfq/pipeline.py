"""One dfq run as plain functions: teacher -> samples -> quantized student -> metrics.

`run` is what the Hydra entry point calls; every stage it chains is usable from Python alone.
"""

from __future__ import annotations

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
from dfq.data.source import DataSource
from dfq.distill.distill import distill
from dfq.distill.module import FinetuneConfig
from dfq.evaluate import top1
from dfq.models.load import ModelEntry, build_model, normalization_from
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.record import record, save_grid
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
    x, y = train.tensors
    if recipe.num_samples > len(x):
        raise ValueError(f"generator.num_samples={recipe.num_samples} exceeds the {len(x)} training images")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(recipe.seed))[: recipe.num_samples]
    return SampleSet(x[pick].clone(), y[pick].clone(), sample_metadata(teacher, recipe))


def make_samples(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    data: DataSource,
    path: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
) -> SampleSet:
    """Samples from the recipe's source: synthesized from the teacher, or real training images."""
    if recipe.source == "real":
        samples = draw_real(teacher, recipe, data)
        if path:
            samples.save(path)
        return samples
    return synthesize(teacher, recipe, path, trainer_options)


def compress(
    teacher: nn.Module,
    samples: SampleSet,
    policy: QuantPolicy,
    calibration: CalibrateConfig,
) -> nn.Module:
    """Quantized copy of `teacher`, calibrated on (the first `calibration.num_samples` of) `samples`."""
    x = samples.x[: calibration.num_samples] if calibration.num_samples else samples.x
    student = quantize(teacher, policy, x[:2])
    return calibrate(student, x, calibration.batch_size)


def limit(dataset: TensorDataset, max_samples: int | None) -> TensorDataset | Subset:
    """The first `max_samples` of a split (all when None): a bounded evaluation cost."""
    return Subset(dataset, range(min(max_samples, len(dataset)))) if max_samples else dataset


def evaluate_source(
    teacher: ModelEntry,
    samples: SampleSet,
    config: RunConfig,
    test: Any,
    trainer_options: dict[str, Any],
) -> dict[str, float]:
    """Calibrate and (optionally) distill a student on `samples`; its test accuracy after each."""
    student = compress(teacher.module, samples, config.quant, config.calibrate)
    result = {"ptq_top1": top1(student, test, config.evaluate.batch_size)}
    finetune: FinetuneConfig = config.finetune
    if finetune.enabled and finetune.epochs > 0:
        labels = samples.y if finetune.label_weight else None
        distill(student, teacher.module, samples.x, finetune, labels, trainer_options)
        result["qat_top1"] = top1(student, test, config.evaluate.batch_size)
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
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    return {"logger": logger, "enable_progress_bar": False, **cfg.trainer}


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The whole pipeline for a composed config; writes artefacts into `run_dir`, returns metrics."""
    start = time.time()
    config = validate(cfg)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    run_dir = Path(run_dir)
    data: DataSource = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    test = limit(data.split("test", teacher.normalization), config.evaluate.max_samples)
    options = trainer_options(cfg)
    sources = {config.generator.name: config.generator, **config.compare}
    results = {}
    for name, recipe in sources.items():
        log.info("data source %s: %d samples from %s", name, recipe.num_samples, recipe.source)
        samples = make_samples(teacher, recipe, data, run_dir / "samples" / f"{name}.pt", options)
        save_grid(samples, teacher.normalization, run_dir / f"samples_{name}.png")
        results[name] = evaluate_source(teacher, samples, config, test, options)
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
    record(run_dir, metrics, cfg)
    print(format_table(metrics), flush=True)
    return metrics
