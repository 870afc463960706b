"""Where a run's samples come from: one registry (`SAMPLE_SOURCES`, the recipe's `source` name -> its
loader): synthesized from the teacher, drawn from the real training split, or a set saved earlier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset, default_collate

from dfq.data.sample_set import SampleSet
from dfq.data.source import DataSource
from dfq.data.synthetic import read_samples
from dfq.distributed import World
from dfq.errors import UserError
from dfq.models.load import ModelEntry
from dfq.speed import SpeedConfig
from dfq.synthesis.batches import sample_metadata, synthesize
from dfq.synthesis.generators import GeneratorConfig


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


SampleSource = Callable[..., SampleSet]
SAMPLE_SOURCES: dict[str, SampleSource] = {
    "synthesis": synthesis_source,
    "real": real_source,
    "saved": saved_source,
}


def sample_source(name: str, key: str = "generator.source") -> SampleSource:
    """The loader of source `name`; an unknown name is an error naming `key` and the valid names."""
    if name not in SAMPLE_SOURCES:
        raise UserError(f"{key}={name!r} is not a sample source; valid: {sorted(SAMPLE_SOURCES)}")
    return SAMPLE_SOURCES[name]


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
    return sample_source(recipe.source)(teacher, recipe, data, path, trainer_options, speed, world)
