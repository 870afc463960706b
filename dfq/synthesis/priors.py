"""Image priors applied to the synthetic batch at each step: jitter, flips, gradient blur and the
swing of strided convolutions inside the teacher (padded crops: `dfq.data.augment`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Roll the batch by a random offset of up to `max_shift` pixels in each direction."""
    if max_shift <= 0:
        return x
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dx, dy), dims=(2, 3))


def swing(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """GENIE-D's swing convolution (Jeon et al., CVPR 2023) on a strided conv's input: reflect-pad by
    `max_shift` and take a same-size window at a random offset (one per batch), so the stride's
    sampling grid moves between steps and the images learn no aliasing pattern of it."""
    if max_shift <= 0:
        return x
    height, width = x.shape[-2:]
    top, left = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    padded = F.pad(x, [max_shift] * 4, mode="reflect")
    return padded[..., top : top + height, left : left + width]


def random_flip(x: torch.Tensor, enabled: bool, generator: torch.Generator) -> torch.Tensor:
    """Mirror the batch horizontally with probability 1/2."""
    if enabled and torch.rand((), generator=generator) < 0.5:
        return torch.flip(x, dims=(3,))
    return x


def gaussian_kernel(sigma: float, channels: int) -> torch.Tensor:
    """A depthwise (channels, 1, k, k) Gaussian kernel of radius ceil(2 sigma)."""
    radius = max(1, int(2 * sigma + 0.5))
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel_1d = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = torch.outer(kernel_1d, kernel_1d)
    return (kernel / kernel.sum()).expand(channels, 1, -1, -1).contiguous()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise Gaussian low-pass of a (N, C, H, W) tensor (used on gradients: a smooth update)."""
    pad = kernel.shape[-1] // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel.to(x), groups=x.shape[1])
