"""Synthesize a data set from a teacher (Python API), batch by batch, resumable."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

import dfq
from dfq.models.load import ModelEntry
from dfq.synthesis.generators import LABELS, GeneratorConfig
from dfq.synthesis.module import SynthesisModule
from dfq.synthesis.store import SampleSet, git_revision

log = logging.getLogger(__name__)


def batch_sizes(total: int, batch_size: int) -> list[int]:
    """Split `total` samples into batches of `batch_size` (the last one smaller)."""
    return [min(batch_size, total - start) for start in range(0, total, batch_size)]


def sample_metadata(teacher: ModelEntry, recipe: GeneratorConfig) -> dict[str, Any]:
    """What a saved set records about how it was made, checked again when it is reused."""
    return {
        "model": teacher.name,
        "generator": recipe.name,
        "recipe": dataclasses.asdict(recipe),
        "seed": recipe.seed,
        "iterations": recipe.iterations,
        "normalization": dataclasses.asdict(teacher.normalization),
        "dfq_version": dfq.__version__,
        "git_revision": git_revision(),
    }


def synthesize_batch(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    index: int,
    size: int,
    trainer_options: dict[str, Any],
) -> SampleSet:
    """Optimize batch number `index` (seeded from the recipe's seed and the index) and return it."""
    make_labels = LABELS[recipe.labels]
    offset = index * recipe.batch_size
    labels = make_labels(size, teacher.normalization.num_classes, offset) if make_labels else None
    seed = recipe.seed * 1_000_003 + index
    module = SynthesisModule(teacher.module, teacher.normalization, recipe, size, labels, seed, teacher.name)
    if recipe.iterations > 0:
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=recipe.iterations,
            log_every_n_steps=max(1, recipe.log_every),
            enable_checkpointing=False,
            enable_model_summary=False,
            **trainer_options,
        )
        steps = DataLoader(range(recipe.iterations), batch_size=1)
        trainer.fit(module, steps)
    x = module.inputs.detach().cpu().clone()
    return SampleSet(x, None if labels is None else labels.clone())


def synthesize(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    path: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
) -> SampleSet:
    """Produce `recipe.num_samples` samples; with `path`, write each finished batch beside it and
    skip finished batches on a rerun, then write the whole set to `path` atomically."""
    trainer_options = {"logger": False, "enable_progress_bar": False, **(trainer_options or {})}
    meta = sample_metadata(teacher, recipe)
    parts_dir = Path(f"{path}.parts") if path else None
    parts = []
    sizes = batch_sizes(recipe.num_samples, recipe.batch_size)
    for index, size in enumerate(sizes):
        part_path = parts_dir / f"batch_{index:05d}.pt" if parts_dir else None
        if part_path and part_path.is_file():
            part = SampleSet.load(part_path)
            if part.meta == meta and len(part) == size:
                parts.append(part)
                continue
        log.info(
            "synthesizing batch %d/%d (%d samples, %d iterations)",
            index + 1,
            len(sizes),
            size,
            recipe.iterations,
        )
        part = synthesize_batch(teacher, recipe, index, size, trainer_options)
        part.meta = meta
        if part_path:
            part.save(part_path)
        parts.append(part)
    samples = SampleSet.concatenate(parts, meta)
    if path:
        samples.save(path)
        shutil.rmtree(parts_dir, ignore_errors=True)
    return samples
