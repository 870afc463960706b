"""Rounding with a straight-through estimator and the affine fake-quantize operation."""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest in the forward pass; identity gradient in the backward pass (Bengio et al. 2013)."""
    return x + (x.round() - x).detach()


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return `x` unchanged but with its gradient multiplied by `factor` (LSQ's step-size scaling)."""
    return x * factor + (x - x * factor).detach()


def integer_range(bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """Smallest and largest integer code of a `bits`-wide grid (narrow range drops the lowest code)."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow_range), 2 ** (bits - 1) - 1
    return int(narrow_range), 2**bits - 1


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Quantize to the integer grid [qmin, qmax] and map back: (clamp(round(x/s) + z) - z) * s.

    Gradients pass straight through the rounding; values clipped by the clamp get none. With a
    learnable `scale` this is exactly LSQ's estimator (Esser et al., ICLR 2020).
    """
    codes = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (codes - zero_point) * scale


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """The integer codes of `x` (no gradient): what an exported model stores."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
