"""Size and cost accounting of a quantized network: weight memory and bit-operations (BOPs).

Weight memory counts each conv/linear weight at its bits, biases and every other parameter (BN) at
32 bits, and each quantizer's parameters (a float32 scale, plus an int32 zero point when
asymmetric, per output channel or per tensor). BOPs are multiply-accumulates times weight bits times
input bits (Baskin et al., 2021; HAWQ-V3), a floating-point operand counting 32 bits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfq.quant.quantizer import UNQUANTIZED_BITS, Quantizer, QuantSpec

FLOAT_BITS = 32
LAYER_KINDS = (nn.Conv2d, nn.Linear)  # the layers dfq quantizes (dfq.quant.modules.QUANTIZED_LAYERS)


@dataclass(frozen=True)
class LayerShape:
    """What one conv/linear layer holds and computes, whatever its bits: weight and bias counts,
    output channels (the number of per-channel scales) and multiply-accumulates per sample."""

    weights: int
    biases: int
    channels: int
    macs: int


@torch.no_grad()
def layer_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """Every conv/linear layer of `model`, by module name, measured in one forward pass over one input
    of `example` (the multiply-accumulates need each layer's output size)."""
    shapes: dict[str, LayerShape] = {}
    names = {module: name for name, module in model.named_modules() if isinstance(module, LAYER_KINDS)}

    def measure(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        per_output = module.weight[0].numel()  # one output element: in_channels/groups x kernel
        bias = module.bias.numel() if module.bias is not None else 0
        macs = output.numel() // output.shape[0] * per_output
        shapes[names[module]] = LayerShape(module.weight.numel(), bias, module.weight.shape[0], macs)

    handles = [module.register_forward_hook(measure) for module in names]
    try:
        model.eval()
        model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def quantizer_bits(spec: QuantSpec | None) -> int:
    """The bits of a tensor quantized by `spec`; 32 for a tensor left in floating point."""
    return spec.bits if spec is not None and spec.enabled else FLOAT_BITS


def parameter_bits(spec: QuantSpec | None, channels: int) -> int:
    """The bits of a quantizer's own parameters: float32 scales, int32 zero points when asymmetric."""
    if spec is None or not spec.enabled:
        return 0
    count = channels if spec.granularity == "per_channel" else 1
    return count * FLOAT_BITS * (1 if spec.symmetric else 2)


def layer_memory_bits(shape: LayerShape, weight: QuantSpec | None, inputs: QuantSpec | None = None) -> int:
    """One layer's weight memory in bits: weights at their bits, biases at 32, quantizer parameters."""
    return (
        shape.weights * quantizer_bits(weight)
        + shape.biases * FLOAT_BITS
        + parameter_bits(weight, shape.channels)
        + parameter_bits(inputs, 1)
    )


def layer_bops(shape: LayerShape, w_bits: int, a_bits: int) -> int:
    """Bit-operations of one layer per sample: MACs x weight bits x input bits (float: 32)."""
    as_float = [FLOAT_BITS if bits >= UNQUANTIZED_BITS else bits for bits in (w_bits, a_bits)]
    return shape.macs * as_float[0] * as_float[1]


def specs_of(layer: nn.Module) -> tuple[QuantSpec | None, QuantSpec | None]:
    """The weight and input specs of a (possibly quantized) layer: None where a tensor is float."""

    def spec(name: str) -> QuantSpec | None:
        quantizer = getattr(layer, name, None)
        return quantizer.spec if isinstance(quantizer, Quantizer) else None

    return spec("weight_quantizer"), spec("input_quantizer")


def pass_through(model: nn.Module) -> nn.Module:
    """A copy of `model` whose quantizers pass every tensor through (no calibration needed)."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, Quantizer):
            module.spec = module.spec.with_bits(FLOAT_BITS)
    return copied


def model_size(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """A (fake-)quantized network's `weight_bytes`, `bops` per sample, and `avg_weight_bits` (the
    conv/linear weights' bits averaged over their count): what `metrics.json` records per student."""
    shapes = layer_shapes(pass_through(model), example)
    layer_bits, bops, weight_bits, weights = 0, 0, 0, 0
    counted: set[int] = set()
    for name, shape in shapes.items():
        layer = model.get_submodule(name)
        weight, inputs = specs_of(layer)
        layer_bits += layer_memory_bits(shape, weight, inputs)
        bops += layer_bops(shape, quantizer_bits(weight), quantizer_bits(inputs))
        weight_bits += shape.weights * quantizer_bits(weight)
        weights += shape.weights
        counted |= {id(p) for p in layer.parameters()}  # its quantizers' too: counted above
    others = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return {
        "weight_bytes": (layer_bits + others * FLOAT_BITS) / 8,
        "bops": float(bops),
        "avg_weight_bits": weight_bits / weights if weights else 0.0,
    }
