"""The interface every data set config instantiates, and the check that data fit a model."""

from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.data import TensorDataset

from dfq.models.normalization import Normalization


class DataSource(Protocol):
    """Something that yields `train` and `test` splits as (x, y) tensors, x normalized."""

    def split(self, name: str, normalization: Normalization) -> TensorDataset: ...


def check_fits(x: torch.Tensor, y: torch.Tensor | None, normalization: Normalization, source: str) -> None:
    """Raise ValueError when images or labels do not match what the model takes."""
    if tuple(x.shape[1:]) != normalization.shape:
        raise ValueError(
            f"{source}: images have shape {tuple(x.shape[1:])} (C, H, W) but the model takes "
            f"{normalization.shape}"
        )
    if y is not None and len(y) and int(y.max()) >= normalization.num_classes:
        raise ValueError(
            f"{source}: labels reach {int(y.max())} but the model has {normalization.num_classes} classes"
        )


def to_dataset(
    pixels: torch.Tensor, y: torch.Tensor, normalization: Normalization, source: str
) -> TensorDataset:
    """Normalize pixels in [0, 1] (N, C, H, W), check they fit the model, and pair them with labels."""
    check_fits(pixels, y, normalization, source)
    return TensorDataset(normalization.normalize(pixels.float()), y.long())
