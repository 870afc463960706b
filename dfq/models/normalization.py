"""What a model expects of its input: channels, size, classes and pixel normalization."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    """Input contract of a model: pixels in [0, 1] are mapped to (p - mean) / std per channel.

    Every tensor that crosses a dfq stage lives in this normalized space; generators clamp to
    `bounds()` and sample grids invert it with `denormalize`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    num_classes: int

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map pixels in [0, 1] (N, C, H, W) to the model's input space."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map model inputs back to pixels in [0, 1] (unclamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel lower and upper limits of valid inputs, shaped (1, C, 1, 1)."""
        mean, std = self._stats(like)
        return ((0 - mean) / std).unsqueeze(0), ((1 - mean) / std).unsqueeze(0)

    def clamp_(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp `x` in place to the valid normalized pixel range."""
        low, high = self.bounds(x)
        return x.copy_(torch.maximum(torch.minimum(x, high), low))
