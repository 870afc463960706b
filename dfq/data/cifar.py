"""CIFAR-10 and CIFAR-100 in torchvision's layout (the "python version" archives, extracted under a root).

The pickled batches are read directly, so a copy made by torchvision, by hand, or a small test folder in
the same layout all work; torchvision is only called to download (`dataset.download=true`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import TensorDataset

from dfq.data.source import DataError, DataNotFoundError, to_dataset
from dfq.models.normalization import Normalization


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, which key holds the labels, and its downloader."""

    folder: str
    splits: dict[str, tuple[str, ...]]
    label_key: str
    num_classes: int
    downloader: type


LAYOUTS = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key="labels",
        num_classes=10,
        downloader=torchvision.datasets.CIFAR10,
    ),
    "cifar100": CifarLayout(
        folder="cifar-100-python",
        splits={"train": ("train",), "test": ("test",)},
        label_key="fine_labels",
        num_classes=100,
        downloader=torchvision.datasets.CIFAR100,
    ),
}


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: images uint8 (N, 3, 32, 32) and integer labels (N,)."""
    try:
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="latin1")
        data, labels = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch[label_key])
    except Exception as error:  # truncated file, wrong format, missing key
        raise DataError(f"{path}: not a CIFAR batch with 'data' and {label_key!r} ({error})") from error
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072) with N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CifarDataset:
    """CIFAR-10/100 from `root` (which holds `cifar-10-batches-py/` or `cifar-100-python/`)."""

    def __init__(self, root: str | Path, variant: str = "cifar10", download: bool = False) -> None:
        if variant not in LAYOUTS:
            raise DataError(f"dataset.variant={variant!r} is invalid; valid: {sorted(LAYOUTS)}")
        self.root = Path(root)
        self.variant = variant
        self.layout = LAYOUTS[variant]
        self.download = download

    def files(self, name: str) -> list[Path]:
        """The batch files of split `name`."""
        if name not in self.layout.splits:
            raise DataError(f"{self.variant} has no split {name!r}; valid: {sorted(self.layout.splits)}")
        return [self.root / self.layout.folder / file for file in self.layout.splits[name]]

    def ensure(self, name: str) -> list[Path]:
        """The batch files of split `name`, downloaded first when missing and allowed."""
        files = self.files(name)
        missing = [path for path in files if not path.is_file()]
        if missing and self.download:
            self.layout.downloader(str(self.root), train=name == "train", download=True)
            missing = [path for path in files if not path.is_file()]
        if missing:
            raise DataNotFoundError(
                f"{self.variant} {name} split not found: {missing[0]} is missing. Set "
                f"dataset.download=true (needs a network) or extract the CIFAR 'python version' archive "
                f"into dataset.root={self.root}"
            )
        return files

    def split(self, name: str, normalization: Normalization) -> TensorDataset:
        batches = [read_batch(path, self.layout.label_key) for path in self.ensure(name)]
        images = torch.from_numpy(np.concatenate([data for data, _ in batches]))
        labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
        return to_dataset(images.float().div_(255.0), labels, normalization, f"{self.variant}/{name}")
