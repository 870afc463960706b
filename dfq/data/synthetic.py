"""A saved sample set as a data source: its samples are the `train` split; `test` comes from another."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from dfq.data.sample_set import SampleSet, SampleSetError
from dfq.data.source import DataSource
from dfq.models.normalization import Normalization

UNLABELLED = -1  # the label given to samples of a set saved without labels


def read_samples(
    path: str | Path | None,
    normalization: Normalization,
    model_name: str | None = None,
    num_samples: int | None = None,
) -> SampleSet:
    """Load a saved set, check it was made for this model, and keep its first `num_samples`."""
    if not path:
        raise SampleSetError("no sample set file given: set generator.path=FILE (or dataset.path=FILE)")
    samples = SampleSet.load(path)
    samples.check_fits(normalization, model_name, f"sample set {path}")
    if num_samples is None:
        return samples
    if num_samples > len(samples):
        raise SampleSetError(
            f"sample set {path} holds {len(samples)} samples, fewer than the {num_samples} asked for; "
            f"set generator.num_samples<={len(samples)}"
        )
    y = None if samples.y is None else samples.y[:num_samples]
    return SampleSet(samples.x[:num_samples], y, samples.meta)


class SyntheticDataset:
    """`dataset=synthetic dataset.path=FILE`: the saved set as `train` split (labels -1 where it has
    none), and every other split delegated to the data source `test` (None: only `train`)."""

    def __init__(self, path: str | None = None, test: DataSource | None = None) -> None:
        self.path = path
        self.test = test

    def split(self, name: str, normalization: Normalization) -> TensorDataset:
        if name == "train":
            samples = read_samples(self.path, normalization)
            y = samples.y if samples.y is not None else torch.full((len(samples),), UNLABELLED)
            return TensorDataset(samples.x, y.long())
        if self.test is None:
            raise SampleSetError(
                f"dataset=synthetic has no {name!r} split of its own; choose a data set for it with "
                "dataset@dataset.test=<option> (cifar10_npz, digits)"
            )
        return self.test.split(name, normalization)
