"""Quantized drop-in replacements: conv and linear with weight and input quantizers, and QuantAct."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfq.models.ops import Add
from dfq.quant.quantizer import Quantizer, QuantSpec


def _quantizer(spec: QuantSpec | None, channel_axis: int, batched: bool = True) -> nn.Module:
    """A Quantizer, or Identity where the tensor stays in floating point."""
    return Quantizer(spec, channel_axis, batched) if spec is not None and spec.enabled else nn.Identity()


class QuantConv2d(nn.Conv2d):
    """Conv2d whose input and weight pass through fake quantizers (identity where unquantized)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight: QuantSpec | None, inputs: QuantSpec | None) -> QuantConv2d:
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
        )  # fmt: skip
        new.load_state_dict(conv.state_dict())
        new.weight_quantizer = _quantizer(weight, channel_axis=0, batched=False)
        new.input_quantizer = _quantizer(inputs, channel_axis=1)
        return new.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """Linear layer whose input and weight pass through fake quantizers."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight: QuantSpec | None, inputs: QuantSpec | None) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None)
        new.load_state_dict(linear.state_dict())
        new.weight_quantizer = _quantizer(weight, channel_axis=0, batched=False)
        new.input_quantizer = _quantizer(inputs, channel_axis=1)
        return new.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantAct(nn.Module):
    """Wraps an activation module and fake-quantizes its output."""

    def __init__(self, activation: nn.Module, spec: QuantSpec) -> None:
        super().__init__()
        self.activation = activation
        self.output_quantizer = _quantizer(spec, channel_axis=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(self.activation(x))


class QuantAdd(nn.Module):
    """Wraps a residual addition module (e.g. dfq.models.ops.Add) and fake-quantizes its output."""

    def __init__(self, add: nn.Module, spec: QuantSpec) -> None:
        super().__init__()
        self.add = add
        self.output_quantizer = _quantizer(spec, channel_axis=1)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(self.add(*inputs))


QUANTIZED_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
)
RESIDUAL_ADDS: tuple[type[nn.Module], ...] = (Add,)
