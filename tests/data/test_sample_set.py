"""Saved sample sets: atomic round trip, damage and model-mismatch errors, reuse as a data set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dfq.data.sample_set import SampleSet, SampleSetError
from dfq.data.synthetic import SyntheticDataset, read_samples
from dfq.models.normalization import Normalization

NORM = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=8, num_classes=4)


def saved_set(path: Path, count: int = 6, labels: bool = True, model: str = "tiny_bn") -> SampleSet:
    meta = {"model": model, "generator": "bn_stats", "normalization": dataclasses.asdict(NORM)}
    samples = SampleSet(torch.randn(count, 3, 8, 8), torch.arange(count) % 4 if labels else None, meta)
    samples.save(path)
    return samples


def test_round_trip_keeps_inputs_labels_and_metadata(tmp_path: Path):
    original = saved_set(tmp_path / "s.pt")
    loaded = SampleSet.load(tmp_path / "s.pt")
    assert torch.equal(loaded.x, original.x) and torch.equal(loaded.y, original.y)
    assert loaded.meta == original.meta
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary name is gone


def test_missing_damaged_and_foreign_files_are_user_errors(tmp_path: Path):
    with pytest.raises(SampleSetError, match="not found"):
        SampleSet.load(tmp_path / "absent.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(SampleSetError, match="damaged"):
        SampleSet.load(tmp_path / "bad.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SampleSetError, match="not a dfq sample set"):
        SampleSet.load(tmp_path / "other.pt")


def test_a_set_made_for_another_model_is_refused(tmp_path: Path):
    saved_set(tmp_path / "s.pt", model="resnet20")
    with pytest.raises(SampleSetError, match=r"made for model 'resnet20', not 'tiny_bn'"):
        read_samples(tmp_path / "s.pt", NORM, "tiny_bn")
    other_norm = dataclasses.replace(NORM, std=(0.2, 0.2, 0.2))
    with pytest.raises(SampleSetError, match="normalization"):
        read_samples(tmp_path / "s.pt", other_norm)
    with pytest.raises(SampleSetError, match=r"shape \(3, 8, 8\).*\(3, 16, 16\)"):
        read_samples(tmp_path / "s.pt", dataclasses.replace(NORM, image_size=16))
    with pytest.raises(SampleSetError, match="holds 6 samples, fewer than the 10"):
        read_samples(tmp_path / "s.pt", NORM, "resnet20", num_samples=10)
    assert len(read_samples(tmp_path / "s.pt", NORM, "resnet20", num_samples=4)) == 4


def test_synthetic_dataset_serves_the_set_as_train_and_delegates_test(tmp_path: Path):
    labelled = saved_set(tmp_path / "a.pt")
    saved_set(tmp_path / "b.pt", labels=False)

    class Real:
        def split(self, name, normalization):
            return torch.utils.data.TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))

    data = SyntheticDataset(str(tmp_path / "a.pt"), test=Real())
    x, y = data.split("train", NORM).tensors
    assert torch.equal(x, labelled.x) and torch.equal(y, labelled.y)
    assert len(data.split("test", NORM)) == 2
    _, unlabelled = SyntheticDataset(str(tmp_path / "b.pt")).split("train", NORM).tensors
    assert (unlabelled == -1).all()
    with pytest.raises(SampleSetError, match=r"no 'test' split.*dataset@dataset.test"):
        SyntheticDataset(str(tmp_path / "b.pt")).split("test", NORM)
    with pytest.raises(SampleSetError, match="no sample set file given"):
        SyntheticDataset(None).split("train", NORM)


def test_dataset_synthetic_config_delegates_its_test_split(tmp_path: Path):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from dfq.config import register_configs
    from dfq.data.digits import DigitsDataset
    from dfq.data.npz import NpzDataset

    register_configs()
    base = ["paths.output_dir=/tmp/dfq-test", "dataset=synthetic", f"dataset.path={tmp_path / 'a.pt'}"]
    with initialize_config_module("dfq.conf", version_base="1.3"):
        default = instantiate(compose("config", overrides=base).dataset)
        digits = instantiate(compose("config", overrides=[*base, "dataset@dataset.test=digits"]).dataset)
    assert isinstance(default, SyntheticDataset) and isinstance(default.test, NpzDataset)
    assert isinstance(digits.test, DigitsDataset) and digits.path == str(tmp_path / "a.pt")


def test_first_samples_and_asking_for_more_than_the_set_holds():
    samples = SampleSet(torch.arange(16.0).reshape(16, 1, 1, 1), torch.arange(16))
    assert samples.first(None, "calibrate.num_samples") is samples
    head = samples.first(4, "calibrate.num_samples")
    assert head.x.flatten().tolist() == [0.0, 1.0, 2.0, 3.0] and head.y.tolist() == [0, 1, 2, 3]
    with pytest.raises(SampleSetError, match="calibrate.num_samples=100000 exceeds the 16 samples"):
        samples.first(100000, "calibrate.num_samples")
