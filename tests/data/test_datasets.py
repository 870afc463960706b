"""Data sets: NumPy archives, CIFAR in torchvision's layout and image folders, built in tmp_path (tiny
fakes in the real formats; nothing is downloaded), with the errors a user meets first."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfq.data.cifar import CifarDataset
from dfq.data.folders import ImageFolderDataset
from dfq.data.npz import NpzDataset, read_npz
from dfq.data.source import DataError, DataNotFoundError
from dfq.models.normalization import Normalization
from dfq.samples import draw_real
from dfq.synthesis.generators import GeneratorConfig

RGB32 = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=32, num_classes=10)


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


def test_npz_reads_nhwc_uint8_as_normalized_nchw(tmp_path):
    x = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    x[1, 2, 5, 0] = 255  # image 1, row 2, column 5, red
    path = write_npz(tmp_path / "a.npz", x, np.array([0, 9, 4]))
    images, labels = NpzDataset(test=str(path)).split("test", RGB32).tensors
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 9, 4]
    assert images[1, 0, 2, 5].item() == pytest.approx((1 - 0.5) / 0.25)
    assert images[0].max().item() == pytest.approx((0 - 0.5) / 0.25)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((2, 32, 32, 3), np.float32), np.array([0, 1]), "'x' must be uint8"),
        (np.zeros((2, 32, 32), np.uint8), np.array([0, 1]), "'x' must be uint8 \\(N, H, W, C\\)"),
        (np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 1, 2]), "'y' must be integer \\(N,\\) with N=2"),
        (np.zeros((2, 32, 32, 3), np.uint8), np.array([0.0, 1.0]), "'y' must be integer"),
    ],
)
def test_npz_shape_and_dtype_errors(tmp_path, x, y, message):
    with pytest.raises(DataError, match=message):
        read_npz(write_npz(tmp_path / "bad.npz", x, y))


def test_npz_without_arrays_and_missing_file(tmp_path):
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(DataError, match="must hold arrays 'x' and 'y'"):
        read_npz(tmp_path / "other.npz")
    with pytest.raises(DataNotFoundError, match="archive not found: .*absent.npz") as error:
        read_npz(tmp_path / "absent.npz")
    assert isinstance(error.value, FileNotFoundError)
    with pytest.raises(DataError, match="set dataset.train="):
        NpzDataset(test=str(tmp_path / "other.npz")).split("train", RGB32)


def test_class_count_and_image_shape_must_fit_the_model(tmp_path):
    path = write_npz(tmp_path / "a.npz", np.zeros((2, 32, 32, 3), np.uint8), np.array([3, 12]))
    with pytest.raises(DataError, match="labels reach 12 but the model has 10 classes"):
        NpzDataset(test=str(path)).split("test", RGB32)
    small = write_npz(tmp_path / "b.npz", np.zeros((2, 16, 16, 3), np.uint8), np.array([0, 1]))
    with pytest.raises(DataError, match=r"shape \(3, 16, 16\).*takes \(3, 32, 32\)"):
        NpzDataset(test=str(small)).split("test", RGB32)


def write_cifar_batch(path: Path, labels: list[int], label_key: str, first_pixel: int = 0) -> None:
    """A batch in the CIFAR 'python version' format: rows of 3072 bytes (R plane, G plane, B plane)."""
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    data[:, 0] = first_pixel  # red of pixel (0, 0)
    data[:, 1024 + 32] = 255  # green of pixel (1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        pickle.dump({"data": data, label_key: labels, "batch_label": b"fake"}, file)


def test_cifar10_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for index in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{index}", [index, 0], "labels", first_pixel=index * 50)
    write_cifar_batch(folder / "test_batch", [9, 8, 7], "labels")
    data = CifarDataset(tmp_path, "cifar10")
    x, y = data.split("train", RGB32).tensors
    assert x.shape == (10, 3, 32, 32)
    assert y.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]  # batches 1..5 in order
    assert x[4, 0, 0, 0].item() == pytest.approx((150 / 255 - 0.5) / 0.25)  # batch 3, red of (0, 0)
    assert x[0, 1, 1, 0].item() == pytest.approx((1 - 0.5) / 0.25)  # green of row 1, column 0
    assert data.split("test", RGB32).tensors[1].tolist() == [9, 8, 7]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar_batch(folder / "train", [99, 42], "fine_labels")
    write_cifar_batch(folder / "test", [5], "fine_labels")
    hundred = Normalization(mean=RGB32.mean, std=RGB32.std, image_size=32, num_classes=100)
    assert CifarDataset(tmp_path, "cifar100").split("train", hundred).tensors[1].tolist() == [99, 42]
    with pytest.raises(DataError, match="labels reach 99 but the model has 10 classes"):
        CifarDataset(tmp_path, "cifar100").split("train", RGB32)


def test_cifar_missing_or_damaged_files_explain_themselves(tmp_path):
    with pytest.raises(
        DataNotFoundError, match=r"cifar-10-batches-py/test_batch is missing.*dataset\.download=true"
    ):
        CifarDataset(tmp_path / "nowhere", "cifar10").split("test", RGB32)
    damaged = tmp_path / "cifar-100-python" / "test"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR batch"):
        CifarDataset(tmp_path, "cifar100").split("test", RGB32)
    with pytest.raises(DataError, match="dataset.variant='cifar1000'"):
        CifarDataset(tmp_path, "cifar1000")


def make_image_folder(root: Path) -> None:
    """train/ and val/ with classes `cat` (red images) and `dog` (blue), 40 x 30 pixels."""
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, count in (("train", 3), ("val", 2)):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (40, 30), colour).save(root / split / name / f"{index}.png")


def test_image_folders_resize_crop_and_label_by_folder(tmp_path):
    make_image_folder(tmp_path)
    model = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), image_size=16, num_classes=2)
    val = ImageFolderDataset(tmp_path).split("test", model)
    assert len(val) == 4 and val.classes == ["cat", "dog"]
    x, y = val[3]
    assert x.shape == (3, 16, 16) and y == 1
    assert torch.allclose(x[2], torch.ones(16, 16)) and torch.allclose(x[0], -torch.ones(16, 16))  # blue dog
    grey = Normalization(mean=(0.5,), std=(0.5,), image_size=8, num_classes=2)
    assert ImageFolderDataset(tmp_path).split("train", grey)[0][0].shape == (1, 8, 8)


def test_image_folder_errors(tmp_path):
    make_image_folder(tmp_path)
    one_class = Normalization(mean=(0.5,) * 3, std=(0.5,) * 3, image_size=16, num_classes=1)
    with pytest.raises(DataError, match="has 2 class folders but the model has 1 classes"):
        ImageFolderDataset(tmp_path).split("test", one_class)
    with pytest.raises(DataNotFoundError, match=r"validation not found.*dataset\.test"):
        ImageFolderDataset(tmp_path, test="validation").split("test", one_class)
    with pytest.raises(DataError, match="crop_fraction"):
        ImageFolderDataset(tmp_path, crop_fraction=1.5)


def test_real_generator_draws_from_an_image_folder(tmp_path):
    """`generator=real` on a lazily decoded set: the sample budget, seeded picks, decoded tensors."""
    from dfq.models.load import ModelEntry

    make_image_folder(tmp_path)
    model = Normalization(mean=(0.5,) * 3, std=(0.5,) * 3, image_size=16, num_classes=2)
    teacher = ModelEntry("tiny", torch.nn.Identity(), model)
    recipe = GeneratorConfig(name="real", source="real", num_samples=4, iterations=0, losses={})
    samples = draw_real(teacher, recipe, ImageFolderDataset(tmp_path))
    assert samples.x.shape == (4, 3, 16, 16) and samples.y.dtype == torch.long
    red = samples.x[:, 0].mean(dim=(1, 2)) > 0  # cats are red, dogs blue
    assert torch.equal(red, samples.y == 0)
    again = draw_real(teacher, recipe, ImageFolderDataset(tmp_path))
    assert torch.equal(samples.y, again.y)
    with pytest.raises(ValueError, match="exceeds the 6 training images"):
        draw_real(
            teacher,
            GeneratorConfig(name="real", source="real", num_samples=7, losses={}),
            ImageFolderDataset(tmp_path),
        )
