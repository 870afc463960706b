"""Per-sample random crops and flips of image batches: the CIFAR training augmentation, used by
synthesis (crops with a per-channel fill), distillation and reconstruction."""

from __future__ import annotations

import torch


def pad_crop(
    x: torch.Tensor, padding: int, fill: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random crop of each sample after padding it by `padding` pixels of `fill` (per channel).

    CIFAR models are trained on such crops (pad 4 with black), so their BN running statistics include
    the edges of the black frame; synthesizing through the same crops lets the samples match those
    statistics without drawing the frame's edges into the image itself. Offsets come from `generator`,
    or from the default generator of `x`'s device.
    """
    if padding <= 0:
        return x
    n, channels, height, width = x.shape
    padded = fill.expand(n, channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, :, padding : padding + height, padding : padding + width] = x
    device = x.device if generator is None else generator.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=device)
    dy, dx = offsets.to(x.device)
    rows = (dy + torch.arange(height, device=x.device))[:, :, None]
    cols = (dx + torch.arange(width, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def augment(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random crop (zero padding `padding`) and horizontal flip of a batch, the CIFAR
    training augmentation; draws from `generator` or the default generator of `x`'s device."""
    n = x.shape[0]
    x = pad_crop(x, padding, x.new_zeros(()), generator)
    if flip:
        device = x.device if generator is None else generator.device
        mirrored = (torch.rand(n, generator=generator, device=device) < 0.5).to(x.device)
        x = torch.where(mirrored.view(n, 1, 1, 1), x.flip(3), x)
    return x
