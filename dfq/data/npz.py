"""NumPy archives with `x` uint8 (N, H, W, C) and `y` int (N,), as in shared/data/cifar10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dfq.data.source import DataError, DataNotFoundError, to_dataset
from dfq.models.normalization import Normalization


def read_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an archive as pixels in [0, 1] (N, C, H, W) and labels, checking shape and dtype."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"data set archive not found: {path} (dataset.train / dataset.test name the files)"
        )
    try:
        with np.load(path) as archive:
            x, y = archive["x"], archive["y"]
    except KeyError as error:
        raise DataError(f"{path}: archive must hold arrays 'x' and 'y' ({error})") from error
    except Exception as error:
        raise DataError(f"{path}: not a readable .npz archive ({error})") from error
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"{path}: 'x' must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be integer (N,) with N={len(x)}, got {y.dtype} {y.shape}")
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
    return pixels, torch.from_numpy(y.astype(np.int64))


class NpzDataset:
    """A data set made of one archive per split."""

    def __init__(self, train: str | None = None, test: str | None = None) -> None:
        self.paths = {"train": train, "test": test}

    def split(self, name: str, normalization: Normalization) -> TensorDataset:
        path = self.paths.get(name)
        if path is None:
            raise DataError(f"npz data set has no {name!r} archive; set dataset.{name}=/path/to.npz")
        pixels, labels = read_npz(path)
        return to_dataset(pixels, labels, normalization, str(path))
