"""ImageNet-style image folders (`root/<split>/<class>/<image>`), decoded lazily with the usual
evaluation transform: resize the shorter side, center-crop to the model's image size, normalize.

Classes are the sorted folder names (torchvision's ImageFolder order, which for ImageNet's WordNet ids
is the class order of the published weights). Evaluation uses the `val` split, arranged in class folders.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from dfq.data.source import DataError, DataNotFoundError
from dfq.models.normalization import Normalization

COLOR_MODES = {1: "L", 3: "RGB"}
INTERPOLATIONS = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
}


def load_image(path: str, mode: str) -> Image.Image:
    """Decode one image file in colour mode `mode` (RGB or L)."""
    with Image.open(path) as image:
        return image.convert(mode)


def evaluation_transform(
    normalization: Normalization, crop_fraction: float, interpolation: str
) -> transforms.Compose:
    """Resize to image_size / crop_fraction (256 for 224 at 0.875), center-crop, scale, normalize."""
    size = normalization.image_size
    return transforms.Compose(
        [
            transforms.Resize(round(size / crop_fraction), INTERPOLATIONS[interpolation]),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(normalization.mean, normalization.std),
        ]
    )


class ImageFolderDataset:
    """An image-folder data set whose `train` and `test` splits are sub-folders of `root`."""

    def __init__(
        self,
        root: str | Path,
        train: str = "train",
        test: str = "val",
        crop_fraction: float = 0.875,
        interpolation: str = "bilinear",
    ) -> None:
        if not 0 < crop_fraction <= 1:
            raise DataError(f"dataset.crop_fraction={crop_fraction} is invalid; expected 0 < value <= 1")
        if interpolation not in INTERPOLATIONS:
            raise DataError(
                f"dataset.interpolation={interpolation!r} is invalid; valid: {sorted(INTERPOLATIONS)}"
            )
        self.root = Path(root)
        self.splits = {"train": train, "test": test}
        self.crop_fraction = crop_fraction
        self.interpolation = interpolation

    def split(self, name: str, normalization: Normalization) -> Dataset:
        if name not in self.splits:
            raise DataError(f"image folder data set has no split {name!r}; valid: {sorted(self.splits)}")
        directory = self.root / self.splits[name]
        if not directory.is_dir():
            raise DataNotFoundError(
                f"image folder {directory} not found: set dataset.root (now {self.root}) and "
                f"dataset.{name} (now {self.splits[name]!r}) to a folder with one sub-folder per class"
            )
        if normalization.channels not in COLOR_MODES:
            raise DataError(f"image folders give 1 or 3 channels; the model takes {normalization.channels}")
        loader = partial(load_image, mode=COLOR_MODES[normalization.channels])
        transform = evaluation_transform(normalization, self.crop_fraction, self.interpolation)
        try:
            dataset = datasets.ImageFolder(str(directory), transform=transform, loader=loader)
        except FileNotFoundError as error:  # no class folders or no images in them
            raise DataNotFoundError(f"image folder {directory}: {error}") from error
        if len(dataset.classes) > normalization.num_classes:
            raise DataError(
                f"{directory} has {len(dataset.classes)} class folders but the model has "
                f"{normalization.num_classes} classes"
            )
        return dataset
