"""What synthesis optimizes to make a batch of images, chosen by `generator.image`: the pixels
themselves (The Knowledge Within, ZeroQ, DeepInversion) or a small generator network and its latent
codes, one pair per batch (GENIE-D, Jeon et al., CVPR 2023), whose convolutions make smooth images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dfq.errors import UserError


class ImageShapeError(UserError):
    """The model's input shape does not fit the chosen image parametrization."""


class PixelImage(nn.Module):
    """The batch is the parameter: every step moves the pixels (kept in the valid range by the caller)."""

    clamp_each_step = True

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        self.pixels = nn.Parameter(initial)

    def forward(self) -> torch.Tensor:
        return self.pixels

    def parameter_groups(self, lr: float, network_lr: float) -> list[dict]:
        return [{"params": [self.pixels], "lr": lr}]


class GenieNetwork(nn.Sequential):
    """GENIE-D's generator (SamsungLabs/Genie, distill.py): a linear map of the latent code to a
    quarter-size feature map, two upsample-conv stages, tanh, and a final per-channel standardization
    (BatchNorm without affine), so each batch has zero mean and unit variance per channel."""

    def __init__(
        self, latent_dim: int, shape: tuple[int, int, int], wide: int = 128, narrow: int = 64
    ) -> None:
        channels, height, width = shape
        super().__init__(
            nn.Linear(latent_dim, wide * (height // 4) * (width // 4)),
            nn.Unflatten(1, (wide, height // 4, width // 4)),
            nn.BatchNorm2d(wide),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(wide, narrow, 3, padding=1),
            nn.BatchNorm2d(narrow),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(narrow, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )


class GeneratorImage(nn.Module):
    """The batch is `network(latents)`: GENIE-D trains both, the latents at the recipe's `lr` and the
    network's weights at `network_lr`. Images are clamped to the valid range only when stored."""

    clamp_each_step = False

    def __init__(self, latents: torch.Tensor, network: nn.Module) -> None:
        super().__init__()
        self.latents = nn.Parameter(latents)
        self.network = network

    def forward(self) -> torch.Tensor:
        return self.network(self.latents)

    def parameter_groups(self, lr: float, network_lr: float) -> list[dict]:
        return [
            {"params": [self.latents], "lr": lr},
            {"params": list(self.network.parameters()), "lr": network_lr},
        ]


def pixel_image(
    initial: Callable[[], torch.Tensor], shape: tuple[int, ...], seed: int, latent_dim: int
) -> PixelImage:
    """The recipe's starting noise as the parameter."""
    return PixelImage(initial())


def generator_image(
    initial: Callable[[], torch.Tensor], shape: tuple[int, ...], seed: int, latent_dim: int
) -> GeneratorImage:
    """A fresh GENIE-D network and standard-normal latents, both seeded by `seed` (the batch's)."""
    batch, channels, height, width = shape
    if height % 4 or width % 4:
        raise ImageShapeError(
            f"generator.image=generator needs image sides divisible by 4; the model takes {height}x{width}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = GenieNetwork(latent_dim, (channels, height, width))
        latents = torch.randn(batch, latent_dim)
    return GeneratorImage(latents, network)


ImageFactory = Callable[[Callable[[], torch.Tensor], tuple[int, ...], int, int], nn.Module]
IMAGES: dict[str, ImageFactory] = {"pixels": pixel_image, "generator": generator_image}
