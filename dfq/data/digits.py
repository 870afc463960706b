"""scikit-learn's 8x8 handwritten digits: real data that ships with a package, for offline runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from dfq.data.source import DataError, to_dataset
from dfq.models.normalization import Normalization


class DigitsDataset:
    """1,797 grey 8x8 digits (optionally upsampled), split once (stratified, seeded) into train and test."""

    def __init__(self, test_fraction: float = 0.25, seed: int = 0, image_size: int = 32) -> None:
        digits = load_digits()
        pixels = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if image_size != pixels.shape[-1]:  # smooth upsampling gives the strokes natural-image-like edges
            pixels = F.interpolate(pixels, size=image_size, mode="bilinear", align_corners=False).clamp(0, 1)
        labels = torch.tensor(digits.target, dtype=torch.long)
        train, test = train_test_split(
            torch.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
        )
        self._splits = {
            "train": (pixels[train], labels[train]),
            "test": (pixels[test], labels[test]),
        }

    def split(self, name: str, normalization: Normalization) -> TensorDataset:
        if name not in self._splits:
            raise DataError(f"digits has no split {name!r}; valid: {sorted(self._splits)}")
        pixels, labels = self._splits[name]
        return to_dataset(pixels, labels, normalization, f"digits/{name}")
