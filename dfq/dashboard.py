"""A run's final metrics and config sent to its experiment logger (`logger=wandb`, `tensorboard`, `csv`).

Losses, per-layer BN divergences and sample grids arrive during the run; this adds the numbers of
metrics.json at the end and closes the logger's run, so each job of a sweep is one run of its own
(grouped by experiment in wandb) and a dashboard can compare them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger writing one event file per dfq run. Lightning finalizes the
    logger at the end of every fit, and a run fits several times (each synthesis batch,
    distillation), which would start a new file each time: here that only flushes, and
    `close_run` (called by `log_final`) ends the file."""

    def finalize(self, status: str) -> None:
        self.experiment.flush()

    def close_run(self) -> None:
        super().finalize("success")


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in a nested dict, keyed by their '/'-joined path (`sources/real/ptq_top1`)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def log_final(logger: Any, metrics: Mapping[str, Any], cfg: DictConfig) -> None:
    """Log the resolved config and the final metrics (`final/...`), then close the logger's run."""
    if not logger:
        return
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({f"final/{key}": value for key, value in flatten(metrics).items()})
    logger.finalize("success")
    close_run = getattr(logger, "close_run", None)  # TensorBoard: end this job's event file
    if callable(close_run):
        close_run()
    finish = getattr(logger.experiment, "finish", None)  # wandb: end this job's run before the next job
    if callable(finish):
        finish()
