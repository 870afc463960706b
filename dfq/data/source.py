"""The interface every data set config instantiates, and the check that data fit a model."""

from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.data import Dataset, TensorDataset

from dfq.errors import UserError
from dfq.models.normalization import Normalization


class DataError(UserError):
    """Data that do not fit the model or are malformed (wrong shape, dtype, class count)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set file or folder that is not where the config says."""


class DataSource(Protocol):
    """Something that yields `train` and `test` splits of (x, y) pairs, x normalized: a TensorDataset
    for sets held in memory, a lazily decoded Dataset for image folders."""

    def split(self, name: str, normalization: Normalization) -> Dataset: ...


def check_fits(x: torch.Tensor, y: torch.Tensor | None, normalization: Normalization, source: str) -> None:
    """Raise DataError when images or labels do not match what the model takes."""
    if tuple(x.shape[1:]) != normalization.shape:
        raise DataError(
            f"{source}: images have shape {tuple(x.shape[1:])} (C, H, W) but the model takes "
            f"{normalization.shape}"
        )
    if y is not None and len(y) and int(y.max()) >= normalization.num_classes:
        raise DataError(
            f"{source}: labels reach {int(y.max())} but the model has {normalization.num_classes} classes"
        )


def to_dataset(
    pixels: torch.Tensor, y: torch.Tensor, normalization: Normalization, source: str
) -> TensorDataset:
    """Normalize pixels in [0, 1] (N, C, H, W), check they fit the model, and pair them with labels."""
    check_fits(pixels, y, normalization, source)
    return TensorDataset(normalization.normalize(pixels.float()), y.long())
