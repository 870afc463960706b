"""Synthesis of a whole sample set, batch by batch: each finished batch is written beside the output,
so an interrupted run resumes where it stopped, and the result is one file written atomically; with
several ranks, each makes its share of the batches and rank 0 gathers them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

import dfq
from dfq.data.sample_set import SampleSet, git_revision
from dfq.distributed import World, single_device
from dfq.errors import UserError
from dfq.faults import FiniteLossGuard, InterruptedRun, fit
from dfq.models.load import ModelEntry
from dfq.progress import StepProgress
from dfq.speed import SpeedConfig
from dfq.synthesis.generators import LABELS, GeneratorConfig
from dfq.synthesis.module import SynthesisModule, TeacherRunner

log = logging.getLogger(__name__)

# Recipe fields that do not change the samples of a batch: a part made under other values is reused.
RESUME_IGNORED = ("num_samples", "log_every")
SYNTHESIS_TIME = "synthesis_time_s"  # metadata key: seconds spent optimizing a batch, or a whole set


def batch_sizes(total: int, batch_size: int) -> list[int]:
    """Split `total` samples into batches of `batch_size` (the last one smaller)."""
    return [min(batch_size, total - start) for start in range(0, total, batch_size)]


def sample_metadata(teacher: ModelEntry, recipe: GeneratorConfig) -> dict[str, Any]:
    """What a saved set records about how it was made, checked again when it is reused."""
    return {
        "model": teacher.name,
        "generator": recipe.name,
        "recipe": recipe.identity(),
        "seed": recipe.seed,
        "iterations": recipe.iterations,
        "normalization": dataclasses.asdict(teacher.normalization),
        "dfq_version": dfq.__version__,
        "git_revision": git_revision(),
    }


def same_recipe(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two metadata records describe the same samples (versions and bookkeeping aside)."""

    def identity(meta: dict[str, Any]) -> tuple:
        recipe = {k: v for k, v in meta.get("recipe", {}).items() if k not in RESUME_IGNORED}
        return meta.get("model"), recipe, meta.get("normalization")

    return identity(a) == identity(b)


def batch_labels(recipe: GeneratorConfig, teacher: ModelEntry, index: int, size: int, seed: int):
    """Target labels of batch `index` (None for a label-free recipe), reproducible from the seed."""
    make_labels = LABELS[recipe.labels]
    if make_labels is None:
        return None
    classes = recipe.target_classes(teacher.normalization.num_classes)
    return make_labels(size, classes, index * recipe.batch_size, torch.Generator().manual_seed(seed + 1))


def synthesize_batch(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    index: int,
    size: int,
    trainer_options: dict[str, Any],
    runner: TeacherRunner,
    batches: int = 1,
) -> SampleSet:
    """Optimize batch number `index` (of `batches`, seeded from the recipe's seed and the index) and
    return it; `runner` is the teacher prepared once for the whole set (hooks, speed switches)."""
    seed = recipe.seed * 1_000_003 + index
    labels = batch_labels(recipe, teacher, index, size, seed)
    module = SynthesisModule(runner, teacher.normalization, recipe, size, labels, seed, teacher.name, index)
    if recipe.iterations > 0:
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=recipe.iterations,
            log_every_n_steps=max(1, recipe.log_every),  # the module logs its own metrics itself
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[
                FiniteLossGuard(f"synthesis of batch {index}", every=recipe.log_every),
                StepProgress(recipe.iterations, f"synthesis batch {index + 1}/{batches}"),
            ],
            **trainer_options,
        )
        steps = DataLoader(range(recipe.iterations), batch_size=1)
        fit(trainer, f"synthesis of batch {index}", module, steps)
        if trainer.global_step < recipe.iterations:  # stopped early: never store it as a finished batch
            raise InterruptedRun(
                f"batch {index} stopped after {trainer.global_step} of {recipe.iterations} iterations; "
                "rerun the same command to resume"
            )
    x = module.samples().cpu().clone()
    return SampleSet(x, None if labels is None else labels.clone())


def finished_part(part_path: Path | None, meta: dict[str, Any], size: int) -> SampleSet | None:
    """A batch written by an earlier, interrupted run of the same recipe, if there is one."""
    if part_path is None or not part_path.is_file():
        return None
    part = SampleSet.load(part_path)
    return part if same_recipe(part.meta, meta) and len(part) == size else None


def teacher_runner(teacher: ModelEntry, recipe: GeneratorConfig, speed: SpeedConfig | None) -> TeacherRunner:
    """The teacher prepared once for every batch of a set (on a copy where checkpointing patches it)."""
    module = copy.deepcopy(teacher.module) if speed and speed.checkpointing else teacher.module
    return TeacherRunner(module, recipe, teacher.name, speed)


def finished_set(path: str | Path | None, meta: dict[str, Any], size: int) -> SampleSet | None:
    """The complete set of the same recipe already written at `path`, if there is one."""
    if not path or not Path(path).is_file():
        return None
    existing = SampleSet.load(path)
    return existing if same_recipe(existing.meta, meta) and len(existing) == size else None


def batch_trainer_options(trainer_options: dict[str, Any] | None, world: World) -> dict[str, Any]:
    """The Trainer options of one rank's batches: quiet unless asked otherwise, on its own device."""
    return single_device({"logger": False, "enable_progress_bar": False, **(trainer_options or {})}, world)


def synthesize(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    path: str | Path | None = None,
    trainer_options: dict[str, Any] | None = None,
    speed: SpeedConfig | None = None,
    world: World | None = None,
) -> SampleSet:
    """Produce `recipe.num_samples` samples; with `path`, write each finished batch beside it and
    skip finished batches on a rerun, then write the whole set to `path` atomically.

    A complete file already at `path` from the same recipe is returned as it is. `speed` switches
    (channels_last, compile, checkpointing) change how fast, not what is computed. With a `world` of
    several ranks, each rank makes its share of the batches and rank 0 gathers them through `path`.
    """
    world = world or World()
    if world.size > 1 and not path:
        raise UserError("synthesis on several ranks needs an output path: the ranks gather through it")
    meta = sample_metadata(teacher, recipe)
    existing = finished_set(path, meta, recipe.num_samples)
    if existing is not None:
        log.info("reusing the finished sample set %s", path)
        return existing
    parts_dir = Path(f"{path}.parts") if path else None
    sizes = batch_sizes(recipe.num_samples, recipe.batch_size)
    options = batch_trainer_options(trainer_options, world)
    parts = make_parts(teacher, recipe, sizes, meta, parts_dir, options, speed, world)
    if world.size > 1:
        return gather_parts(path, parts_dir, sizes, meta, world)
    return write_set(parts, meta, path, parts_dir)


def synthesize_share(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    path: str | Path,
    world: World,
    trainer_options: dict[str, Any] | None = None,
    speed: SpeedConfig | None = None,
) -> int:
    """Make `world.rank`'s share of the batches (round robin, as DDP splits them) as parts beside
    `path`, for processes started by hand without a process group: a later `synthesize(..., path)`
    finds every part finished and only joins them. Returns how many batches this share holds (none
    when the whole set is already at `path`)."""
    meta = sample_metadata(teacher, recipe)
    if finished_set(path, meta, recipe.num_samples) is not None:
        return 0
    options = batch_trainer_options(trainer_options, world)
    sizes = batch_sizes(recipe.num_samples, recipe.batch_size)
    parts_dir = Path(f"{path}.parts")
    return len(make_parts(teacher, recipe, sizes, meta, parts_dir, options, speed, world))


def parts_from_set(larger: SampleSet, teacher: ModelEntry, recipe: GeneratorConfig, path: str | Path) -> int:
    """Write the first batches of a finished, larger set of the same recipe as the parts beside `path`
    (batch i is seeded by i alone, whatever the set's size), so a smaller budget reuses costly samples;
    each part is charged its share of the larger set's synthesis time. Returns how many parts."""
    meta = sample_metadata(teacher, recipe)
    if not same_recipe(larger.meta, meta):
        made = f"{larger.meta.get('generator')}, seed {larger.meta.get('seed')}"
        raise UserError(f"the larger set was made by another recipe ({made}) than {recipe.name}'s")
    if len(larger) < recipe.num_samples:
        raise UserError(f"the larger set holds {len(larger)} samples, fewer than {recipe.num_samples}")
    total = larger.meta.get(SYNTHESIS_TIME)
    parts_dir, start = Path(f"{path}.parts"), 0
    sizes = batch_sizes(recipe.num_samples, recipe.batch_size)
    for index, size in enumerate(sizes):
        rows = slice(start, start + size)
        seconds = None if total is None else round(total * size / len(larger), 3)
        y = None if larger.y is None else larger.y[rows].clone()
        part = SampleSet(larger.x[rows].clone(), y, {**meta, SYNTHESIS_TIME: seconds})
        part.save(part_file(parts_dir, index))
        start += size
    return len(sizes)


def part_file(parts_dir: Path, index: int) -> Path:
    """Where finished batch `index` waits until the whole set is written."""
    return parts_dir / f"batch_{index:05d}.pt"


def synthesis_time(parts: list[SampleSet]) -> float | None:
    """Seconds the batches took to optimize, summed over runs that resumed them (None when a batch was
    made by a dfq that did not record it)."""
    times = [part.meta.get(SYNTHESIS_TIME) for part in parts]
    return None if None in times else round(sum(times), 3)


def write_set(
    parts: list[SampleSet], meta: dict[str, Any], path: str | Path | None, parts_dir: Path | None
) -> SampleSet:
    """The finished batches as one set, written to `path` (when given) before their parts are removed."""
    samples = SampleSet.concatenate(parts, {**meta, SYNTHESIS_TIME: synthesis_time(parts)})
    if path:
        samples.save(path)
        shutil.rmtree(parts_dir, ignore_errors=True)
    return samples


def make_parts(
    teacher: ModelEntry,
    recipe: GeneratorConfig,
    sizes: list[int],
    meta: dict[str, Any],
    parts_dir: Path | None,
    trainer_options: dict[str, Any],
    speed: SpeedConfig | None,
    world: World,
) -> list[SampleSet]:
    """This rank's batches, each reused from `parts_dir` when finished before, else made and saved."""
    parts, runner = [], None
    try:
        for index, size in enumerate(sizes):
            if not world.owns(index):
                continue
            part_path = part_file(parts_dir, index) if parts_dir else None
            part = finished_part(part_path, meta, size)
            if part is None:
                log.info("synthesizing batch %d/%d (%d samples, %d iterations)", index + 1, len(sizes),
                         size, recipe.iterations)  # fmt: skip
                runner = runner or teacher_runner(teacher, recipe, speed)
                start = time.perf_counter()
                part = synthesize_batch(teacher, recipe, index, size, trainer_options, runner, len(sizes))
                part.meta = {**meta, SYNTHESIS_TIME: round(time.perf_counter() - start, 3)}
                if part_path:
                    part.save(part_path)
            parts.append(part)
    finally:
        if runner:
            runner.close()
    return parts


def gather_parts(
    path: str | Path, parts_dir: Path, sizes: list[int], meta: dict[str, Any], world: World
) -> SampleSet:
    """Once every rank has saved its batches, rank 0 joins them into `path`; then every rank reads it."""
    world.barrier()
    if world.is_zero:
        parts = [finished_part(part_file(parts_dir, i), meta, size) for i, size in enumerate(sizes)]
        missing = [i for i, part in enumerate(parts) if part is None]
        if missing:
            raise RuntimeError(f"batches {missing} of {path} were not written by their ranks")
        write_set(parts, meta, path, parts_dir)
    world.barrier()
    return SampleSet.load(path)
