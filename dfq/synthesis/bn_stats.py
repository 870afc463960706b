"""Hooks on BatchNorm modules that record the statistics of each layer's input batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfq.errors import UserError


class NoBatchNormError(UserError):
    """A BN-statistics generator was asked to work on a model without BatchNorm layers."""


@dataclass
class LayerStatistics:
    """Batch mean/variance of one BN layer's input, beside the layer's running statistics.

    `sample_mean`/`sample_var` (N, C) are each sample's own per-channel statistics (over H x W),
    recorded only when asked for (ZeroQ's loss uses them).
    """

    name: str
    batch_mean: torch.Tensor
    batch_var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float
    sample_mean: torch.Tensor | None = None
    sample_var: torch.Tensor | None = None
    elements: int = 0  # values per channel the batch statistics were taken over (N x H x W)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every `_BatchNorm` module (timm's BatchNormAct2d included) with tracked statistics."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None
    ]


def welford_statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance from a BatchNorm statistics kernel (one Welford pass)."""
    if x.is_cuda:
        mean, invstd = torch.batch_norm_stats(x, eps)
    else:
        _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
    return mean.float(), invstd.float().pow(-2) - eps


def row_sum_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same from sums and sums of squares over each sample's contiguous rows: about twice as fast
    as the BatchNorm kernel for a contiguous fp32 batch on the CPU, exact to float32 rounding for
    activations whose mean is within a few hundred standard deviations of zero."""
    rows = x.reshape(x.shape[0], x.shape[1], -1)
    count = rows.shape[0] * rows.shape[2]
    mean = rows.sum(2).sum(0) / count
    var = torch.linalg.vecdot(rows, rows).sum(0) / count - mean.square()
    return mean, var.clamp_min_(0.0)


class ChannelStatistics(torch.autograd.Function):
    """Per-channel mean and biased variance of a (N, C, ...) batch, differentiable, one fused pass
    each way: a reduction forward, one multiply-add backward. `torch.var_mean` over dims (0, 2, 3)
    costs several times a convolution on CPU and builds a chain of full-size ops for its gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        fast_rows = x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
        mean, var = row_sum_statistics(x) if fast_rows else welford_statistics(x, eps)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> tuple[torch.Tensor, None]:
        # d mean / dx = 1/M and d var / dx = 2 (x - mean) / M, so grad = x * a + b per channel
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        a = 2.0 * grad_var / count
        b = grad_mean / count - a * mean
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(b.view(shape), x, a.view(shape)).to(x.dtype), None


def channel_statistics(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased variance) of a batch over every dimension but 1, in float32."""
    return ChannelStatistics.apply(x, eps)


def per_sample_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's per-channel mean and (unbiased) variance over its spatial positions, (N, C) each."""
    flat = x.flatten(2) if x.dim() > 2 else x.unsqueeze(-1)
    var, mean = torch.var_mean(flat, dim=2, correction=1 if flat.shape[2] > 1 else 0)
    return mean, var


class BatchNormStatistics:
    """Context manager: while active, each forward pass fills `self.layers` in call order.

    Statistics are computed inside the hook as tensors (no host synchronisation) and replaced on
    the next forward, so no graph outlives its step. With `per_sample`, each sample's own
    statistics are recorded too. Setting `recording` to False keeps the hooks in place (a compiled
    teacher is not recompiled) but records nothing.
    """

    def __init__(self, model: nn.Module, model_name: str = "model", per_sample: bool = False) -> None:
        self.modules = batchnorm_layers(model)
        if not self.modules:
            raise NoBatchNormError(
                f"model {model_name!r} has no BatchNorm layer with running statistics, so "
                "BN-statistics generators (bn_stats, bn_stats_inception, zeroq, deepinversion) and "
                "scores cannot be used on it; choose generator=inception or generator=gaussian"
            )
        self.per_sample = per_sample
        self.recording = True
        self.keep = True  # False: compute (a recomputed checkpoint block must save the same) but keep none
        self.layers: list[LayerStatistics] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def record(module: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
            if not self.recording:
                return
            x = inputs[0]
            mean, var = channel_statistics(x, module.eps)
            stats = LayerStatistics(name, mean, var, module.running_mean, module.running_var, module.eps)
            stats.elements = x.numel() // x.shape[1]
            if self.per_sample:
                stats.sample_mean, stats.sample_var = per_sample_statistics(x)
            if self.keep:
                self.layers.append(stats)

        return record

    def __enter__(self) -> BatchNormStatistics:
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.layers = []
