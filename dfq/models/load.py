"""Build a model from its config entry and load its weights, with errors that say what to do."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch import nn

from dfq.errors import UserError
from dfq.models.errors import CheckpointError
from dfq.models.fetch import fetch_checkpoint, is_url
from dfq.models.normalization import Normalization


@dataclass
class ModelEntry:
    """A frozen, eval-mode network with its name and input contract."""

    name: str
    module: nn.Module
    normalization: Normalization


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved bare or under 'state_dict'/'model', with a `module.` prefix stripped.

    `path` may be a URL: the file is then taken from the torch hub cache or downloaded (`dfq.models.fetch`).
    """
    path = fetch_checkpoint(str(path)) if is_url(path) else Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}. Download it or point model.checkpoint=/path/to/file at it."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} could not be read ({error})") from error
    for key in ("state_dict", "model"):
        if isinstance(blob, Mapping) and isinstance(blob.get(key), Mapping):
            blob = blob[key]
    if not isinstance(blob, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(blob).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def load_weights(module: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load strictly; on a mismatch name the first missing and unexpected keys."""
    # BatchNorm's `num_batches_tracked` is absent from checkpoints of older PyTorch and unused in eval
    expected = {k for k in module.state_dict() if not k.endswith("num_batches_tracked") or k in state_dict}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(module).__name__}: "
            f"{len(missing)} missing keys (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})"
        )
    try:
        module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {source} does not fit: {error}") from error


def freeze(module: nn.Module) -> nn.Module:
    """Put `module` in eval mode with gradients off: a teacher is never changed."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def normalization_from(cfg: DictConfig) -> Normalization:
    """The `input` block of a model entry as a Normalization."""
    return Normalization(
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
    )


def instantiate_arch(arch: DictConfig) -> nn.Module:
    """Build `model.arch`; a user error raised while building (unknown name, weights not found) is
    reported as itself rather than wrapped in Hydra's InstantiationException."""
    try:
        return hydra.utils.instantiate(arch)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


def build_model(cfg: DictConfig, train_fn: Callable[[nn.Module, str], nn.Module] | None = None) -> ModelEntry:
    """Instantiate `cfg.arch`, load `cfg.checkpoint` (training it first with `train_fn` when absent)."""
    module = instantiate_arch(cfg.arch)
    checkpoint = cfg.get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).is_file() and train_fn is not None:
            train_fn(module, checkpoint)
        load_weights(module, read_state_dict(checkpoint), str(checkpoint))
    return ModelEntry(cfg.name, freeze(module), normalization_from(cfg.input))
