"""Quantization-aware distillation as one plain function over a sample set."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from dfq.distill.module import DistillationModule, FinetuneConfig, distillation_loss
from dfq.faults import AtomicCheckpointIO, FiniteLossGuard, fit
from dfq.progress import StepProgress
from dfq.speed import SpeedConfig


class EpochShuffle(Sampler[int]):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone: a run resumed at epoch k sees
    the same order as an uninterrupted one (Lightning calls `set_epoch`)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed, self.epoch = count, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.count, generator=generator).tolist())

    def __len__(self) -> int:
        return self.count


def split_holdout(
    tensors: tuple[torch.Tensor, ...], fraction: float, seed: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """Split (x, y?) into a training part and a held-out part of `fraction` (seeded; None when 0)."""
    count = len(tensors[0])
    held = math.floor(count * fraction)
    if held == 0:
        return tensors, None
    if held >= count:
        raise ValueError(f"finetune.holdout={fraction} leaves no training sample out of {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    train, holdout = order[held:], order[:held]
    return tuple(t[train] for t in tensors), tuple(t[holdout] for t in tensors)


@torch.no_grad()
def held_out_kl(student: nn.Module, teacher: nn.Module, loader: DataLoader, temperature: float) -> float:
    """Mean KL(teacher || student) over a loader, both in eval mode."""
    student.eval()
    total = count = 0.0
    for batch in loader:
        x = batch[0]
        total += float(distillation_loss(student(x), teacher(x), temperature)) * len(x)
        count += len(x)
    return total / max(count, 1)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    config: FinetuneConfig,
    y: torch.Tensor | None = None,
    trainer_options: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    speed: SpeedConfig | None = None,
) -> nn.Module:
    """Fine-tune the calibrated `student` towards `teacher` on inputs `x` (labels `y` optional).

    `config.holdout` > 0 keeps that fraction of the samples (never test data) aside and returns the
    student with the lowest held-out KL, the calibrated starting point included. With `checkpoint_dir`,
    Lightning checkpoints (`last.ckpt`) are written there and a rerun resumes from them. `speed`:
    memory layout and compilation of both networks (`dfq.speed`).
    """
    if not config.active:
        return student
    train, holdout = split_holdout((x,) if y is None else (x, y), config.holdout, config.seed)
    loader = DataLoader(
        TensorDataset(*train),
        batch_size=config.batch_size,
        sampler=EpochShuffle(len(train[0]), config.seed),
        drop_last=len(train[0]) > config.batch_size,
    )
    val_loader = None if holdout is None else DataLoader(TensorDataset(*holdout), batch_size=256)
    module = DistillationModule(student, teacher, config, config.epochs * len(loader), speed)
    if val_loader is not None:
        module.best_kl = held_out_kl(student, teacher, val_loader, config.temperature)
        module.best_state = {k: v.clone() for k, v in student.state_dict().items()}
    progress = StepProgress(config.epochs * len(loader), "distillation")
    callbacks, resume = [FiniteLossGuard("distillation", every=max(1, len(loader))), progress], None
    if checkpoint_dir is not None:
        # save_top_k=1 without a monitor keeps the latest epoch; last.ckpt is what a rerun resumes from
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=1))
        last = Path(checkpoint_dir) / "last.ckpt"
        resume = str(last) if config.resume and last.is_file() else None
    options = {"logger": False, "enable_progress_bar": False, **(trainer_options or {})}
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        enable_checkpointing=checkpoint_dir is not None,
        callbacks=callbacks,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=max(1, math.ceil(len(loader) / 2)),
        gradient_clip_val=config.grad_clip,
        gradient_clip_algorithm="norm",
        **options,
    )
    with warnings.catch_warnings():  # without a hold-out split, skipping validation is intended
        warnings.filterwarnings("ignore", message=".*validation_step.*no `val_dataloader`.*")
        fit(trainer, "distillation", module, loader, val_loader, ckpt_path=resume)
    if module.best_state is not None:
        student.load_state_dict(module.best_state)
    student.eval()
    return student
