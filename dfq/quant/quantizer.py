"""One fake quantizer: orthogonal options (bits x granularity x symmetry x observer), STE rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from dfq.quant.fake_quant import (
    IntegerGrid,
    fake_quantize,
    fake_quantize_fixed,
    fake_quantize_learned,
    scale_gradient,
)
from dfq.quant.observers import OBSERVERS, known_options, make_observer
from dfq.ranges import Range, check_ranges, ranged

UNQUANTIZED_BITS = 16  # 16 and 32 bits mean "leave in floating point"
GRANULARITIES = ("per_tensor", "per_channel")
# The widths dfq quantizes to (16/32: left in floating point), as `ranged` options and as a Range.
BITS = {"low": 2, "high": 8, "extra": (16, 32), "text": "2 to 8, or 16/32 for floating point"}
BIT_RANGE = Range(**BITS)


@dataclass
class QuantSpec:
    """How one tensor is quantized. Each field varies independently of the others.

    `learnable` trains the step size (LSQ, Esser et al., ICLR 2020); `learnable_clip` trains the
    clipping bounds instead (PACT, Choi et al. 2018, generalized to a lower and an upper bound).
    `integer_zero_point=False` lets asymmetric grids start exactly at the observed minimum (a real-valued
    offset, as in float-offset fake-quantization codebases); integer deployment and ONNX need it True.
    """

    bits: int = ranged(8, **BITS)
    granularity: str = "per_tensor"
    symmetric: bool = False
    narrow_range: bool = False
    observer: str = "minmax"
    observer_options: dict[str, Any] = field(default_factory=dict)
    dynamic: bool = False  # re-derive the range from every input (weights during QAT)
    learnable: bool = False  # LSQ: the step size becomes a trained parameter
    learnable_clip: bool = False  # PACT: the clipping range [low, high] becomes a trained parameter
    integer_zero_point: bool = True  # False: real-valued offset (asymmetric grid from min exactly)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} is invalid; valid: {list(GRANULARITIES)}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer={self.observer!r} is invalid; valid: {sorted(OBSERVERS)}")
        unknown = sorted(set(self.observer_options) - known_options())
        if unknown:
            raise ValueError(f"observer_options.{unknown[0]} is unknown; valid: {sorted(known_options())}")
        if self.learnable and self.learnable_clip:
            raise ValueError("learnable=true and learnable_clip=true exclude each other; choose one")
        if self.dynamic and (self.learnable or self.learnable_clip):
            raise ValueError("dynamic=true re-derives the range every step; set it false to learn the range")

    @property
    def enabled(self) -> bool:
        return self.bits < UNQUANTIZED_BITS

    @property
    def grid(self) -> IntegerGrid:
        return IntegerGrid(self.bits, self.symmetric, self.narrow_range, self.integer_zero_point)

    def with_bits(self, bits: int) -> QuantSpec:
        return replace(self, bits=bits)


def affine_parameters(
    low: torch.Tensor, high: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale, zero point and integer range covering [low, high] on the spec's grid (see IntegerGrid)."""
    return spec.grid.affine(low, high)


class Quantizer(nn.Module):
    """Fake-quantizes a tensor. Modes: pass-through while observing, then quantize with fixed ranges.

    `batched`: the first dimension is the batch (activations), so LSQ's gradient scale counts the
    features of one sample, as in the paper; weights count all their values. Two more pieces, off by
    default, are set by block reconstruction (dfq.quant.reconstruct): `rounding`, a learned rounding
    of a fixed weight (dfq.quant.rounding.AdaRound) in place of nearest rounding, and
    `drop_probability`, QDrop's chance that an element passes unquantized; it also trains step sizes
    without LSQ's gradient scale (`step_gradient_scale`), as BRECQ's and GENIE's code do.
    """

    def __init__(self, spec: QuantSpec, channel_axis: int = 0, batched: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.batched = batched
        self.channel_axis = channel_axis if spec.granularity == "per_channel" else None
        self.observer = make_observer(spec.observer, self.channel_axis, spec.grid, **spec.observer_options)
        self.observing = False
        self.rounding: nn.Module | None = None
        self.drop_probability = 0.0
        self.step_gradient_scale = True  # LSQ's 1/sqrt(N * qmax) on a trained step size's gradient
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

    def broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`t` (a scalar, or one value per channel) shaped to broadcast against `x`."""
        if self.channel_axis is None:
            return t.reshape(())
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return t.reshape(shape)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix scale and zero point from what the observer saw (LSQ: the scale becomes learnable)."""
        low, high = self.observer.range()
        scale, zero_point, self.qmin, self.qmax = self.spec.grid.affine(low, high)
        self.zero_point = zero_point
        self.scale = nn.Parameter(scale) if self.spec.learnable else scale
        if self.spec.learnable_clip:
            self.clip_low = nn.Parameter(torch.clamp(low, max=0.0).clone())
            self.clip_high = nn.Parameter(torch.clamp(high, min=0.0).clone())
        self.observer.reset()

    def observe(self, x: torch.Tensor) -> None:
        self.observer.update(x)

    def parameters_now(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """The scale, zero point and integer range in use now (detached): what an export stores."""
        if self.spec.learnable_clip:
            with torch.no_grad():
                scale, zero_point, self.qmin, self.qmax = self.spec.grid.affine(self.clip_low, self.clip_high)
                self.scale, self.zero_point = scale, zero_point
        return self.scale.detach(), self.zero_point.detach(), self.qmin, self.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized = self.quantize(x)
        if self.drop_probability > 0 and quantized is not x:
            return torch.where(torch.rand_like(x) < self.drop_probability, x, quantized)
        return quantized

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """`x` fake-quantized (or `x` itself while observing or when the spec is off)."""
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
        if self.spec.learnable_clip:
            return self._clipped(x)
        if self.rounding is not None:
            return self._rounded(x)
        scale = self.scale
        if not isinstance(scale, nn.Parameter):
            zero_point = self.broadcast(self.zero_point, x)
            fractional = not (self.spec.symmetric or self.spec.integer_zero_point)
            return fake_quantize_fixed(
                x, self.broadcast(scale, x), zero_point, self.qmin, self.qmax, fractional
            )
        if self.step_gradient_scale:
            features = x.numel() // (x.shape[0] if self.batched else 1)
            per_scale = max(1, features // scale.numel())
            scale = scale_gradient(scale, 1.0 / math.sqrt(per_scale * max(self.qmax, 1)))
        return fake_quantize_learned(
            x, self.broadcast(scale, x), self.broadcast(self.zero_point, x), self.qmin, self.qmax
        )

    def _rounded(self, x: torch.Tensor) -> torch.Tensor:
        """The learned rounding's codes (of the weight it was made for), clamped to the integer range
        and mapped back; gradients reach its variables, and a trained scale."""
        zero_point = self.broadcast(self.zero_point, x)
        fraction = zero_point - torch.round(zero_point)
        whole = zero_point - fraction
        codes = torch.clamp(self.rounding.codes(), self.qmin - whole, self.qmax - whole)
        return (codes - fraction) * self.broadcast(self.scale, x)

    def _clipped(self, x: torch.Tensor) -> torch.Tensor:
        """PACT's estimator: clip to the learned [low, high], round straight through.

        Gradients: 1 to `x` inside the range, 1 to `high` (`low`) from each value above (below) it.
        """
        scale, zero_point, qmin, qmax = self.parameters_now()
        low, high = self.broadcast(self.clip_low, x), self.broadcast(self.clip_high, x)
        clipped = torch.minimum(torch.maximum(x, low), high)
        quantized = fake_quantize(
            clipped.detach(), self.broadcast(scale, x), self.broadcast(zero_point, x), qmin, qmax
        )
        return clipped + (quantized - clipped).detach()
