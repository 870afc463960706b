"""Quantization-aware distillation as one plain function over a sample set."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.distill.module import DistillationModule, FinetuneConfig


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    config: FinetuneConfig,
    y: torch.Tensor | None = None,
    trainer_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Fine-tune the calibrated `student` towards `teacher` on inputs `x` (labels `y` optional)."""
    if not config.enabled or config.epochs == 0:
        return student
    tensors = (x,) if y is None else (x, y)
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
        drop_last=len(x) > config.batch_size,
    )
    steps = config.epochs * len(loader)
    module = DistillationModule(student, teacher, config, steps)
    options = {"logger": False, "enable_progress_bar": False, **(trainer_options or {})}
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, math.ceil(len(loader) / 2)),
        **options,
    )
    trainer.fit(module, loader)
    student.eval()
    return student
