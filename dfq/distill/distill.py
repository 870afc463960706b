"""Quantization-aware distillation as one plain function over a sample set."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.distill.batches import BatchProvider, SampleBatches
from dfq.distill.losses import distillation_loss, low_pass
from dfq.distill.module import DistillationModule, FinetuneConfig
from dfq.faults import AtomicCheckpointIO, FiniteLossGuard, fit
from dfq.progress import StepProgress
from dfq.speed import SpeedConfig


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


def batches_for(
    x: torch.Tensor | BatchProvider, y: torch.Tensor | None, config: FinetuneConfig
) -> tuple[BatchProvider, SampleBatches | None]:
    """The training provider and the held-out samples (`config.holdout`); with `config.low_pass`, the
    training samples seen through SynQ's low-pass filter. Only a fixed set can be split or filtered."""
    provider = SampleBatches(x, y) if isinstance(x, torch.Tensor) else x
    if not isinstance(provider, SampleBatches):
        for key in ("holdout", "low_pass"):
            if getattr(config, key):
                raise ValueError(
                    f"finetune.{key}={getattr(config, key)} needs a fixed sample set, not {type(x).__name__}"
                )
        return provider, None
    train, holdout = provider.split(config.holdout, config.seed)
    if config.low_pass:
        train = train.map(lambda inputs: low_pass(inputs, config.low_pass))
    return train, holdout


def resume_path(checkpoint_dir: str | Path, resume: bool) -> str | None:
    """The checkpoint a rerun resumes from: `last.ckpt` (ModelCheckpoint with save_top_k=1 and no
    monitor keeps the latest epoch there), if resuming and it exists."""
    last = Path(checkpoint_dir) / "last.ckpt"
    return str(last) if resume and last.is_file() else None


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor | BatchProvider,
    config: FinetuneConfig,
    y: torch.Tensor | None = None,
    trainer_options: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    speed: SpeedConfig | None = None,
) -> nn.Module:
    """Fine-tune the calibrated `student` towards `teacher` on inputs `x` (labels `y` optional), or on
    the batches of a provider (`dfq.distill.batches`).

    `config.holdout` > 0 keeps that fraction of the samples (never test data) aside and returns the
    student with the lowest held-out KL, the calibrated starting point included. With `checkpoint_dir`,
    Lightning checkpoints (`last.ckpt`) are written there and a rerun resumes from them. `speed`:
    memory layout and compilation of both networks (`dfq.speed`).
    """
    if not config.active:
        return student
    train, holdout = batches_for(x, y, config)
    loader = train.loader(config.batch_size, config.seed)
    steps = config.epochs * train.steps_per_epoch(config.batch_size)
    val_loader = None if holdout is None else DataLoader(TensorDataset(*holdout.tensors), batch_size=256)
    module = DistillationModule(student, teacher, config, steps, speed)
    if val_loader is not None:
        module.best_kl = held_out_kl(student, teacher, val_loader, config.temperature)
        module.best_state = {k: v.clone() for k, v in student.state_dict().items()}
    progress = StepProgress(steps, "distillation")
    callbacks = [FiniteLossGuard("distillation", every=max(1, steps // config.epochs)), progress]
    resume = None
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=1))
        resume = resume_path(checkpoint_dir, config.resume)
    options = {"logger": False, "enable_progress_bar": False, **(trainer_options or {})}
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        enable_checkpointing=checkpoint_dir is not None,
        callbacks=callbacks,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=max(1, math.ceil(steps / config.epochs / 2)),
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
