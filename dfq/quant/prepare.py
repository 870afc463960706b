"""Turn a float model into its fake-quantized copy according to a QuantPolicy."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfq.models.submodules import set_submodule
from dfq.quant.modules import ACTIVATIONS, QUANTIZED_LAYERS, RESIDUAL_ADDS, QuantAct, QuantAdd
from dfq.quant.policy import QuantPolicy, graph_order, spec_for
from dfq.quant.quantizer import Quantizer


def quantize(model: nn.Module, policy: QuantPolicy, example: torch.Tensor) -> nn.Module:
    """Return a deep copy of `model` with Conv2d/Linear (and activations, by placement) quantized.

    With `policy.quantize_residual`, the outputs of residual additions (modules in RESIDUAL_ADDS) are
    quantized at the activation width as well.

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
        if name:
            set_submodule(student, name, replacement)
        else:  # the model is itself a single conv/linear layer
            student = replacement
    if activations_quantized:
        _quantize_outputs(student, policy, ACTIVATIONS, QuantAct)
    if policy.quantize_residual:
        _quantize_outputs(student, policy, RESIDUAL_ADDS, QuantAdd)
    return student


def _quantize_outputs(
    student: nn.Module, policy: QuantPolicy, kinds: tuple[type[nn.Module], ...], wrapper: type[nn.Module]
) -> None:
    """Wrap every module of the given kinds so that its output is fake-quantized at activation bits."""
    for name, module in list(student.named_modules()):
        spec = spec_for(policy.activation, policy.activation_bits(name))
        if isinstance(module, kinds) and spec is not None:
            set_submodule(student, name, wrapper(module, spec))


def quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Every fake quantizer of `model`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Quantizer)}
