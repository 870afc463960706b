"""The padded random crops of CIFAR training, and synthesis seen through them."""

from __future__ import annotations

import torch
from torch import nn

from dfq.data.augment import pad_crop
from dfq.models.load import ModelEntry, freeze
from dfq.models.normalization import Normalization
from dfq.synthesis.generators import GeneratorConfig
from dfq.synthesis.module import SynthesisModule


def frame_crop(x: torch.Tensor, fill: torch.Tensor, padding: int, dy: int, dx: int) -> torch.Tensor:
    """One (C, H, W) image padded with `fill` by hand, then cropped at offset (dy, dx)."""
    channels, height, width = x.shape
    framed = fill.reshape(channels, 1, 1).repeat(1, height + 2 * padding, width + 2 * padding)
    framed[:, padding : padding + height, padding : padding + width] = x
    return framed[:, dy : dy + height, dx : dx + width]


def test_each_sample_is_its_own_crop_of_a_filled_frame():
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    fill = torch.tensor([-2.0, -1.5, -1.0]).view(1, 3, 1, 1)
    out = pad_crop(x, 2, fill, torch.Generator().manual_seed(0))
    offsets = []
    for image, cropped in zip(x.detach(), out.detach(), strict=True):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(cropped, frame_crop(image, fill, 2, dy, dx))
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) > 1  # offsets are drawn per sample, not per batch
    out.sum().backward()
    kept = sum((5 - abs(dy - 2)) * (5 - abs(dx - 2)) for dy, dx in offsets) * 3
    assert x.grad.sum().item() == kept  # gradients reach exactly the pixels inside each crop
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_no_padding_leaves_the_batch_alone():
    x = torch.randn(2, 3, 4, 4)
    assert pad_crop(x, 0, torch.zeros(1, 3, 1, 1), torch.Generator()) is x


def grey_crop_teacher(padding: int) -> ModelEntry:
    """A BN network whose running statistics were recorded on padded crops of plain grey images."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=None), nn.Flatten(), nn.LazyLinear(2)
    )
    normalization = Normalization((0.5,) * 3, (0.25,) * 3, 8, 2)
    grey = torch.zeros(64, 3, 8, 8)  # pixel 0.5 everywhere
    black = normalization.bounds(grey)[0]
    model.train()
    with torch.no_grad():
        for step in range(20):
            model(pad_crop(grey, padding, black, torch.Generator().manual_seed(step)))
    return ModelEntry("grey_crops", freeze(model), normalization)


def test_synthesis_sees_its_samples_through_the_training_crops():
    entry = grey_crop_teacher(padding=2)
    grey = torch.zeros(64, 3, 8, 8)

    def bn_loss(pad: int) -> float:
        recipe = GeneratorConfig(name="bn_stats", batch_size=64, pad_crop=pad)
        module = SynthesisModule(entry.module, entry.normalization, recipe, 64, None, 0, entry.name)
        with torch.no_grad():
            module.inputs.copy_(grey)
            return module.losses()[0].item()

    # Grey images through the same black-framed crops reproduce the statistics; bare, they cannot.
    assert bn_loss(2) < 0.05 * bn_loss(0)
