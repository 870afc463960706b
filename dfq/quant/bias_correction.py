"""Bias correction of the quantized weights' expected output error (Nagel et al., ICCV 2019).

Empirical variant (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", sec. 4.2, with the expectation taken over the calibration samples instead of derived
from BN statistics): a layer with weight error eps = Q(W) - W shifts its output by E[eps * x]; since
convolution is linear, E over samples and positions of (eps * x) equals eps applied to the mean input
E[x], averaged over output positions (padding and stride included exactly). That shift is subtracted
from the layer's bias, which is created where the layer had none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.quant.modules import QuantConv2d, QuantLinear
from dfq.quant.quantizer import Quantizer


def corrected_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The quantized conv/linear layers whose weights are fake-quantized (bias correction applies)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (QuantConv2d, QuantLinear)) and isinstance(module.weight_quantizer, Quantizer)
    }


@torch.no_grad()
def mean_inputs(
    model: nn.Module, layers: dict[str, nn.Module], samples: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per layer, the mean over `samples` of the (quantized) input tensor it multiplies, shape (C, ...)."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            total = output.sum(dim=0)
            sums[name] = total if name not in sums else sums[name] + total

        return record

    handles = [layer.input_quantizer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    model.eval()
    try:
        for (batch,) in DataLoader(TensorDataset(samples), batch_size=batch_size):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / len(samples) for name, total in sums.items()}


def expected_error(layer: nn.Module, mean_input: torch.Tensor) -> torch.Tensor:
    """E[eps * x] per output channel, for the layer's weight error eps and mean input E[x]."""
    error = layer.weight_quantizer(layer.weight) - layer.weight
    if isinstance(layer, QuantLinear):
        return F.linear(mean_input, error)
    shifted = layer._conv_forward(mean_input.unsqueeze(0), error, None)
    return shifted.mean(dim=(0, 2, 3))


@torch.no_grad()
def correct_bias(model: nn.Module, samples: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Subtract each quantized layer's expected weight-quantization error from its bias, in place.

    Call on a calibrated student; the weight quantizers must be frozen or dynamic (ranges from the
    weights themselves), so the error measured here is the one inference sees.
    """
    layers = corrected_layers(model)
    means = mean_inputs(model, layers, samples, batch_size)
    for name, layer in layers.items():
        if name not in means:
            continue  # a layer the forward pass never reached
        shift = expected_error(layer, means[name])
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=layer.weight.requires_grad)
        layer.bias.sub_(shift)
    return model
