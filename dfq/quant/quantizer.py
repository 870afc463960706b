"""One fake quantizer: orthogonal options (bits x granularity x symmetry x observer), STE rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from dfq.quant.fake_quant import fake_quantize, integer_range, scale_gradient
from dfq.quant.observers import make_observer

UNQUANTIZED_BITS = 16  # 16 and 32 bits mean "leave in floating point"
GRANULARITIES = ("per_tensor", "per_channel")
VALID_BITS = "2 to 8, or 16/32 for floating point"


def valid_bits(bits: int) -> bool:
    """Whether `bits` is a width dfq can quantize to (or 16/32, meaning unquantized)."""
    return 2 <= bits <= 8 or bits in (16, 32)


@dataclass
class QuantSpec:
    """How one tensor is quantized. Each field varies independently of the others."""

    bits: int = 8
    granularity: str = "per_tensor"
    symmetric: bool = False
    narrow_range: bool = False
    observer: str = "minmax"
    observer_options: dict[str, Any] = field(default_factory=dict)
    dynamic: bool = False  # re-derive the range from every input (weights during QAT)
    learnable: bool = False  # LSQ: the step size becomes a trained parameter

    def __post_init__(self) -> None:
        if not valid_bits(self.bits):
            raise ValueError(f"bits={self.bits} is out of range; valid: {VALID_BITS}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is invalid; valid: {list(GRANULARITIES)}")

    @property
    def enabled(self) -> bool:
        return self.bits < UNQUANTIZED_BITS

    def with_bits(self, bits: int) -> QuantSpec:
        return replace(self, bits=bits)


def affine_parameters(
    low: torch.Tensor, high: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale, zero point and integer range covering [low, high] (widened to include 0).

    Symmetric grids are signed with zero point 0, except when the range is non-negative (after a
    ReLU), where an unsigned grid is exact and doubles the resolution.
    """
    low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
    tiny = torch.finfo(torch.float32).eps
    if spec.symmetric:
        signed = bool((low < 0).any())
        qmin, qmax = integer_range(spec.bits, signed, spec.narrow_range)
        scale = torch.clamp(torch.maximum(-low, high) / qmax, min=tiny)
        return scale, torch.zeros_like(scale), qmin, qmax
    qmin, qmax = integer_range(spec.bits, False, spec.narrow_range)
    scale = torch.clamp((high - low) / (qmax - qmin), min=tiny)
    zero_point = torch.clamp(qmin - torch.round(low / scale), qmin, qmax)
    return scale, zero_point, qmin, qmax


class Quantizer(nn.Module):
    """Fake-quantizes a tensor. Modes: pass-through while observing, then quantize with fixed ranges."""

    def __init__(self, spec: QuantSpec, channel_axis: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.channel_axis = channel_axis if spec.granularity == "per_channel" else None
        self.observer = make_observer(spec.observer, self.channel_axis, **spec.observer_options)
        self.observing = False
        self.qmin, self.qmax = 0, 0
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)

    def extra_repr(self) -> str:
        s = self.spec
        kind = "sym" if s.symmetric else "asym"
        return f"bits={s.bits}, {s.granularity}, {kind}, observer={s.observer}"

    @property
    def calibrated(self) -> bool:
        return self.scale is not None

    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return t.reshape(())
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return t.reshape(shape)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix scale and zero point from what the observer saw (LSQ: the scale becomes learnable)."""
        scale, zero_point, self.qmin, self.qmax = affine_parameters(*self.observer.range(), self.spec)
        self.zero_point = zero_point
        if self.spec.learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.scale = scale
        self.observer.reset()

    def observe(self, x: torch.Tensor) -> None:
        self.observer.update(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.enabled:
            return x
        if self.observing:
            self.observe(x)
            return x
        if self.spec.dynamic:
            self.observer.reset()
            self.observe(x)
            self.freeze()
        if self.scale is None:
            raise RuntimeError("quantizer used before calibration: call dfq.quant.calibrate first")
        scale = self.scale
        if isinstance(scale, nn.Parameter):
            per_scale = x.numel() // scale.numel()
            scale = scale_gradient(scale, 1.0 / math.sqrt(per_scale * max(self.qmax, 1)))
        return fake_quantize(
            x, self._broadcast(scale, x), self._broadcast(self.zero_point, x), self.qmin, self.qmax
        )
