"""Guards shared by both trainable stages: stop on a non-finite loss, write checkpoints atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from dfq.errors import RunFault
from dfq.io import atomic_path


class NonFiniteLossError(RunFault):
    """The loss became NaN or infinite; nothing of the diverged batch or model is written."""


class FiniteLossGuard(pl.Callback):
    """Stops training when the loss stops being finite, naming the step and the loss terms.

    The first bad step is tracked on the loss's device; the host reads it only every `every` steps
    (1 on CPU, where reading is free), so the guard adds no synchronisation on an accelerator.
    """

    def __init__(self, stage: str, every: int = 1) -> None:
        self.stage = stage
        self.every = max(1, every)
        self.first_bad: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, *args
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = trainer.global_step - 1  # the optimizer step of this batch has already been counted
        newly_bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, step), self.first_bad)
        last = trainer.num_training_batches != math.inf and args[-1] + 1 >= trainer.num_training_batches
        if loss.device.type == "cpu" or step % self.every == 0 or last:
            self.check(module, loss)

    def check(self, module: pl.LightningModule, loss: torch.Tensor) -> None:
        bad = int(self.first_bad) if self.first_bad is not None else -1
        if bad < 0:
            return
        terms = getattr(module, "last_terms", {}) or {}
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()) or f"loss={float(loss):.4g}"
        raise NonFiniteLossError(f"{self.stage}: the loss became non-finite at step {bad} ({shown})")


class InterruptedRun(RunFault):
    """A stage stopped on SIGTERM/SIGINT (a preemption); its finished work is on disk."""


def fit(trainer: pl.Trainer, stage: str, *args: Any, **kwargs: Any) -> None:
    """`trainer.fit`, with Lightning's exits on SIGTERM/SIGINT turned into `InterruptedRun`, so that
    an interrupted stage is never mistaken for a finished one."""
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit as stop:
        raise InterruptedRun(f"{stage} was interrupted; rerun the same command to resume") from stop
    if trainer.interrupted:
        raise InterruptedRun(f"{stage} was interrupted; rerun the same command to resume")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed: a crash leaves no partial file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
