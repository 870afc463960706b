"""What a run leaves in its directory: metrics.json, the resolved config, a grid of samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from dfq.data.sample_set import SampleSet
from dfq.io import atomic_path, save_json
from dfq.models.normalization import Normalization


def sample_grid(samples: SampleSet, normalization: Normalization, per_class: int = 8) -> torch.Tensor:
    """Denormalized images in a grid: one row per class when labelled, else a square."""
    x, y = samples.x, samples.y
    if y is not None:
        rows = [x[y == c][:per_class] for c in range(normalization.num_classes)]
        rows = [torch.cat([r, torch.zeros(per_class - len(r), *x.shape[1:])]) for r in rows]
        x, ncol = torch.cat(rows), per_class
    else:
        x = x[:64]
        ncol = math.ceil(math.sqrt(len(x)))
    pixels = normalization.denormalize(x).clamp(0, 1)
    return make_grid(pixels, nrow=ncol, padding=1, pad_value=1.0)


def save_grid(samples: SampleSet, normalization: Normalization, path: str | Path) -> None:
    """Write `sample_grid` as a PNG (atomically), upscaled so small images stay visible."""
    grid = sample_grid(samples, normalization)
    scale = max(1, 256 // grid.shape[-1] + 1) if grid.shape[-1] < 256 else 1
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")


def wandb_image(logger: Any, grid: torch.Tensor, key: str, caption: str) -> None:
    pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    logger.log_image(key=key, images=[pixels], caption=[caption])


def tensorboard_image(logger: Any, grid: torch.Tensor, key: str, caption: str) -> None:
    logger.experiment.add_image(key, grid, global_step=0)


def image_loggers() -> dict[type, Any]:
    """Logger class -> how it takes an image (Lightning's loggers have no image API in common)."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    return {WandbLogger: wandb_image, TensorBoardLogger: tensorboard_image}


def log_sample_grid(logger: Any, samples: SampleSet, normalization: Normalization, key: str) -> bool:
    """Log `sample_grid` as an image where the logger takes images (wandb, TensorBoard); returns
    whether it was logged."""
    log_image = next((f for kind, f in image_loggers().items() if isinstance(logger, kind)), None)
    if log_image is None:
        return False
    log_image(logger, sample_grid(samples, normalization), key, f"{len(samples)} samples")
    return True


def record(run_dir: str | Path, metrics: dict[str, Any], cfg: DictConfig) -> None:
    """Write metrics.json and config.yaml (resolved) into `run_dir`."""
    run_dir = Path(run_dir)
    save_json(metrics, run_dir / "metrics.json")
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
