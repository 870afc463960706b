"""Rounding with a straight-through estimator and the affine fake-quantize operation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    Computed as round(clamp(x/s, qmin - z, qmax - z)) * s, the same values for an integer zero point,
    so that gradients pass straight through the rounding and values clipped get none; with a learnable
    `scale` this is exactly LSQ's estimator (Esser et al., ICLR 2020): d/ds = round(x/s) - x/s inside
    the grid, and its clipping bound outside. A real-valued zero point z = i + f (i integer) shifts the
    grid by f steps: codes round(x/s + f) + i.
    """
    fraction = zero_point - torch.round(zero_point)  # 0 for integer zero points: no change at all
    whole = zero_point - fraction
    return (round_ste(torch.clamp(x / scale + fraction, qmin - whole, qmax - whole)) - fraction) * scale


class FixedFakeQuantize(torch.autograd.Function):
    """`fake_quantize` for a scale and zero point that are not trained, fused for speed: five
    full-size passes forward (three in place), one mask saved, one multiply backward, where autograd
    through the clamp with tensor bounds runs about ten comparisons and selects."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qmin: int,
        qmax: int,
        fractional: bool,
    ) -> torch.Tensor:
        fraction = zero_point - torch.round(zero_point) if fractional else None
        whole = zero_point if fraction is None else zero_point - fraction
        grid = x / scale if fraction is None else (x / scale).add_(fraction)
        clipped = grid.clamp_min(qmin - whole).clamp_max_(qmax - whole)
        # 1 inside the grid (the gradient passes straight through), 0 where clipped; a float mask
        # written over `grid`: multiplying by it is several times faster than selecting with a bool one
        ctx.save_for_backward(torch.eq(clipped, grid, out=grid))
        codes = clipped.round_()
        return (codes if fraction is None else codes.sub_(fraction)).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


def fake_quantize_fixed(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, fractional: bool
) -> torch.Tensor:
    """`fake_quantize` with the same values and input gradient, for a scale and zero point that
    receive no gradient (calibrated or re-derived ranges; not LSQ). `fractional`: the zero point
    may be real-valued; False skips the offset arithmetic (integer zero points)."""
    return FixedFakeQuantize.apply(x, scale.detach(), zero_point.detach(), qmin, qmax, fractional)


class LearnedStepFakeQuantize(torch.autograd.Function):
    """`fake_quantize` with a trained step size (LSQ, Esser et al., ICLR 2020), fused: the same values
    and gradients as autograd through `fake_quantize`, in a few full-size passes instead of the dozen
    that the clamp with tensor bounds and the straight-through rounding cost. d/dx is 1 inside the
    grid and 0 where clipped; d/ds is round(v) - v inside and the clipping bound outside (v = x/s + f),
    summed over the values that share each step size."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
    ) -> torch.Tensor:
        fraction = zero_point - torch.round(zero_point)
        whole = zero_point - fraction
        grid = x / scale + fraction
        clipped = torch.minimum(torch.maximum(grid, qmin - whole), qmax - whole)
        codes = torch.round(clipped)
        inside = clipped == grid
        ctx.save_for_backward(inside, codes - torch.where(inside, grid, fraction))
        ctx.scale_shape = scale.shape
        return (codes - fraction) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inside, scale_term = ctx.saved_tensors
        grad_scale = (grad * scale_term).sum_to_size(ctx.scale_shape)  # over what shares a step size
        return grad * inside, grad_scale, None, None, None


def fake_quantize_learned(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """`fake_quantize` for a trained `scale` (broadcastable against `x`), fused for speed."""
    return LearnedStepFakeQuantize.apply(x, scale, zero_point.detach(), qmin, qmax)


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """The integer codes of `x` (no gradient): what an exported model stores."""
    fraction = zero_point - torch.round(zero_point)
    return torch.clamp(torch.round(x / scale + fraction) + (zero_point - fraction), qmin, qmax)


@dataclass(frozen=True)
class IntegerGrid:
    """Width and shape of an integer grid: what the affine mapping and range-optimizing observers need."""

    bits: int = 8
    symmetric: bool = False
    narrow_range: bool = False
    integer_zero_point: bool = True  # False: asymmetric grids start exactly at `low` (real-valued offset)

    def affine(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Scale, zero point and integer range covering [low, high] (widened to include 0).

        Symmetric grids are signed with zero point 0, except when the range is non-negative (after a
        ReLU), where an unsigned grid is exact and doubles the resolution.
        """
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
        tiny = torch.finfo(torch.float32).eps
        if self.symmetric:
            signed = bool((low < 0).any())
            qmin, qmax = integer_range(self.bits, signed, self.narrow_range)
            scale = torch.clamp(torch.maximum(-low, high) / qmax, min=tiny)
            return scale, torch.zeros_like(scale), qmin, qmax
        qmin, qmax = integer_range(self.bits, False, self.narrow_range)
        scale = torch.clamp((high - low) / (qmax - qmin), min=tiny)
        offset = qmin - low / scale
        zero_point = torch.clamp(torch.round(offset) if self.integer_zero_point else offset, qmin, qmax)
        return scale, zero_point, qmin, qmax
