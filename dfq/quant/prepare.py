"""Turn a float model into its fake-quantized copy according to a QuantPolicy."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfq.quant.modules import ACTIVATIONS, QUANTIZED_LAYERS, QuantAct
from dfq.quant.policy import QuantPolicy, graph_order, spec_for
from dfq.quant.quantizer import Quantizer


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def quantize(model: nn.Module, policy: QuantPolicy, example: torch.Tensor) -> nn.Module:
    """Return a deep copy of `model` with Conv2d/Linear (and activations, by placement) quantized.

    `example` is one input batch; a forward pass over it gives the graph order of the layers.
    """
    student = copy.deepcopy(model)
    layers = graph_order(student, example, tuple(QUANTIZED_LAYERS))
    activations_quantized = policy.placement == "after_activation"
    for index, name in enumerate(layers):
        bits = policy.layer_bits(name, index, len(layers))
        if bits is None:
            continue
        layer = student.get_submodule(name)
        input_bits = 32 if activations_quantized else bits.a_bits
        replacement = QUANTIZED_LAYERS[type(layer)].from_float(
            layer, spec_for(policy.weight, bits.w_bits), spec_for(policy.activation, input_bits)
        )
        _set_module(student, name, replacement)
    if activations_quantized:
        for name, module in list(student.named_modules()):
            spec = spec_for(policy.activation, policy.activation_bits(name))
            if isinstance(module, ACTIVATIONS) and spec is not None:
                _set_module(student, name, QuantAct(module, spec))
    return student


def quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Every fake quantizer of `model`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Quantizer)}
