"""Per-layer sensitivity to weight quantization, measured on samples (no labels): one registry,
`SENSITIVITIES`, name -> function(model, samples, layers, candidates, weight spec, options) giving
{layer name: {bits: sensitivity}}; larger means quantizing that layer at those bits hurts more.
`zeroq_input_sensitivity` measures the same for a layer's input, where input widths are searched."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfq.progress import Progress
from dfq.quant.quantizer import Quantizer, QuantSpec

Sensitivity = dict[str, dict[int, float]]


@dataclass(frozen=True)
class SensitivityOptions:
    """Batch size of the passes over the samples, and Hutchinson's probe count (hawq)."""

    batch_size: int = 128
    probes: int = 16
    seed: int = 0


@torch.no_grad()
def quantized_weight(weight: torch.Tensor, spec: QuantSpec, bits: int) -> torch.Tensor:
    """`weight` fake-quantized at `bits` on the policy's weight grid (its observer, granularity)."""
    quantizer = Quantizer(spec.with_bits(bits), channel_axis=0)
    quantizer.observe(weight)
    quantizer.freeze()
    return quantizer.quantize(weight).detach()


@contextlib.contextmanager
def swapped_weight(layer: nn.Module, weight: torch.Tensor) -> Iterator[None]:
    """`layer` computes with `weight` inside the block; its own weight is back afterwards."""
    original = layer.weight.data
    layer.weight.data = weight
    try:
        yield
    finally:
        layer.weight.data = original


def batches(samples: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(samples.split(batch_size))


@torch.no_grad()
def output_divergence(
    model: nn.Module, samples: Sequence[torch.Tensor], reference: list[torch.Tensor]
) -> float:
    """KL(reference softmax || model softmax), averaged over the samples."""
    total, count = 0.0, 0
    for batch, logits in zip(samples, reference, strict=True):
        log_q = F.log_softmax(model(batch), dim=1)
        log_p = F.log_softmax(logits, dim=1)
        total += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
        count += len(batch)
    return total / count


Perturbation = Callable[[nn.Module, int, list[torch.Tensor]], contextlib.AbstractContextManager]


def output_sensitivity(
    model: nn.Module,
    samples: torch.Tensor,
    layers: Sequence[str],
    candidates: Sequence[int],
    options: SensitivityOptions,
    perturb: Perturbation,
    label: str,
) -> Sensitivity:
    """ZeroQ's measure (Cai et al., CVPR 2020): the KL divergence of the network's output while one
    layer at a time is perturbed at each width (`perturb(layer, bits, batches)`), all else as it is."""
    model.eval()
    inputs = batches(samples, options.batch_size)
    with torch.no_grad():
        reference = [model(batch) for batch in inputs]
    result: Sensitivity = {}
    with Progress(len(layers) * len(candidates), label) as progress:
        for name in layers:
            layer = model.get_submodule(name)
            result[name] = {}
            for bits in candidates:
                with perturb(layer, bits, inputs):
                    result[name][bits] = output_divergence(model, inputs, reference)
                progress.update()
    return result


def zeroq_sensitivity(
    model: nn.Module,
    samples: torch.Tensor,
    layers: Sequence[str],
    candidates: Sequence[int],
    spec: QuantSpec,
    options: SensitivityOptions,
) -> Sensitivity:
    """ZeroQ's (Cai et al., CVPR 2020): the KL divergence of the network's output when only that
    layer's weights are quantized at b bits, every other tensor in floating point."""

    def perturb(
        layer: nn.Module, bits: int, _inputs: list[torch.Tensor]
    ) -> contextlib.AbstractContextManager:
        return swapped_weight(layer, quantized_weight(layer.weight, spec, bits))

    return output_sensitivity(model, samples, layers, candidates, options, perturb, "zeroq sensitivity")


@contextlib.contextmanager
def quantized_input(
    model: nn.Module, layer: nn.Module, spec: QuantSpec, inputs: list[torch.Tensor]
) -> Iterator[None]:
    """`layer` sees its input fake-quantized by `spec` inside the block, the range observed first on
    `model`'s passes over `inputs`."""
    quantizer = Quantizer(spec, channel_axis=1, batched=True)
    handle = layer.register_forward_pre_hook(lambda _module, args: (quantizer(args[0]), *args[1:]))
    try:
        quantizer.observing = True
        with torch.no_grad():
            for batch in inputs:
                model(batch)
        quantizer.observing = False
        quantizer.freeze()
        yield
    finally:
        handle.remove()


def zeroq_input_sensitivity(
    model: nn.Module,
    samples: torch.Tensor,
    layers: Sequence[str],
    candidates: Sequence[int],
    spec: QuantSpec,
    options: SensitivityOptions,
) -> Sensitivity:
    """ZeroQ's measure for activations: the KL divergence of the network's output when only that
    layer's input is quantized at b bits (its range observed on the same samples), all else float."""

    def perturb(layer: nn.Module, bits: int, inputs: list[torch.Tensor]) -> contextlib.AbstractContextManager:
        return quantized_input(model, layer, spec.with_bits(bits), inputs)

    return output_sensitivity(model, samples, layers, candidates, options, perturb, "zeroq input sensitivity")


def hessian_traces(
    model: nn.Module, samples: torch.Tensor, layers: Sequence[str], options: SensitivityOptions
) -> dict[str, float]:
    """Hutchinson's estimate (E[v'Hv], Rademacher v) of each layer's block of the Hessian of the
    distillation loss (KL from the network's own float output), averaged over the samples."""
    model = copy.deepcopy(model).eval()  # a frozen teacher's weights need gradients here
    weights = [model.get_submodule(name).weight.requires_grad_(True) for name in layers]
    generator = torch.Generator().manual_seed(options.seed)
    traces = torch.zeros(len(layers))
    inputs = batches(samples, options.batch_size)
    with Progress(len(inputs) * options.probes, "hawq hessian trace") as progress:
        for batch in inputs:
            with torch.no_grad():
                target = F.log_softmax(model(batch), dim=1)
            log_q = F.log_softmax(model(batch), dim=1)
            loss = F.kl_div(log_q, target, log_target=True, reduction="batchmean")
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            for probe in range(options.probes):
                vs = [torch.randint(0, 2, w.shape, generator=generator).to(w) * 2 - 1 for w in weights]
                dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
                hvs = torch.autograd.grad(dot, weights, retain_graph=probe < options.probes - 1)
                estimate = torch.stack([(h * v).sum() for h, v in zip(hvs, vs, strict=True)])
                traces += estimate.detach() * len(batch) / (len(samples) * options.probes)
                progress.update()
    return {name: float(trace) for name, trace in zip(layers, traces, strict=True)}


def hawq_sensitivity(
    model: nn.Module,
    samples: torch.Tensor,
    layers: Sequence[str],
    candidates: Sequence[int],
    spec: QuantSpec,
    options: SensitivityOptions,
) -> Sensitivity:
    """HAWQ-V2's (Dong et al., NeurIPS 2020): the layer's mean Hessian trace (Tr(H)/n) times the
    squared norm of its weights' quantization perturbation at b bits."""
    traces = hessian_traces(model, samples, layers, options)
    result: Sensitivity = {}
    for name in layers:
        weight = model.get_submodule(name).weight.detach()
        mean_trace = traces[name] / weight.numel()
        result[name] = {
            bits: mean_trace * float((quantized_weight(weight, spec, bits) - weight).pow(2).sum())
            for bits in candidates
        }
    return result


SensitivityFunction = Callable[
    [nn.Module, torch.Tensor, Sequence[str], Sequence[int], QuantSpec, SensitivityOptions], Sensitivity
]
SENSITIVITIES: dict[str, SensitivityFunction] = {"zeroq": zeroq_sensitivity, "hawq": hawq_sensitivity}
