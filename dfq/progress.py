"""Progress of long stages: a tqdm bar on a terminal, a plain line at most once a minute elsewhere.

A log file or CI (stderr not a terminal) never gets carriage-return updates; a run that finishes
within a minute writes nothing there. `StepProgress` is the same for a Lightning fit, one update per
optimizer step with its loss.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import pytorch_lightning as pl
from tqdm.auto import tqdm

QUIET_INTERVAL_S = 60.0  # the least time between two lines when stderr is not a terminal


class Progress:
    """Counts `total` units of work named `description`; `update` moves it on, with optional values
    (a loss) shown beside the count."""

    def __init__(self, total: int, description: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.description, self.done = total, description, 0
        self.interactive = self.stream.isatty()
        self.bar = tqdm(
            total=total, desc=description, file=self.stream, leave=False, disable=not self.interactive
        )
        self.last_line = time.monotonic()

    def update(self, count: int = 1, **values: float) -> None:
        self.done += count
        if self.interactive:
            self.bar.update(count)
            if values:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= QUIET_INTERVAL_S:
            self.last_line = now
            shown = "".join(f" {k} {v:.4g}" for k, v in values.items())
            percent = 100 * self.done / max(self.total, 1)
            print(f"{self.description}: {self.done}/{self.total} ({percent:.0f}%){shown}", file=self.stream)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StepProgress(pl.Callback):
    """A `Progress` over the optimizer steps of one Lightning fit: `total` steps (all epochs),
    showing the step's loss (and the epoch, when there are several)."""

    LOSS_EVERY = 10  # read the loss (a device sync) every this many steps

    def __init__(self, total: int, description: str) -> None:
        self.total, self.description, self.progress = total, description, None
        self.values: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.progress = Progress(self.total, self.description)
        self.progress.update(trainer.global_step)  # a resumed fit starts part-way

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if (trainer.max_epochs or 1) > 1:
            self.values["epoch"] = trainer.current_epoch
        if loss is not None and index % self.LOSS_EVERY == 0:
            self.values["loss"] = float(loss)
        self.progress.update(1, **self.values)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.progress:
            self.progress.close()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, error: BaseException) -> None:
        self.on_train_end(trainer, module)  # an interrupted fit leaves no bar behind
