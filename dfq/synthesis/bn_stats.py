"""Hooks on BatchNorm modules that record the statistics of each layer's input batch."""

from __future__ import annotations

from dataclasses import dataclass

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


def per_sample_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's per-channel mean and (unbiased) variance over its spatial positions, (N, C) each."""
    flat = x.flatten(2) if x.dim() > 2 else x.unsqueeze(-1)
    var, mean = torch.var_mean(flat, dim=2, correction=1 if flat.shape[2] > 1 else 0)
    return mean, var


class BatchNormStatistics:
    """Context manager: while active, each forward pass fills `self.layers` in call order.

    Statistics are computed inside the hook as tensors (no host synchronisation) and replaced on
    the next forward, so no graph outlives its step. With `per_sample`, each sample's own
    statistics are recorded too.
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
        self.layers: list[LayerStatistics] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def record(module: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            dims = [d for d in range(x.dim()) if d != 1]
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            stats = LayerStatistics(name, mean, var, module.running_mean, module.running_var, module.eps)
            stats.elements = x.numel() // x.shape[1]
            if self.per_sample:
                stats.sample_mean, stats.sample_var = per_sample_statistics(x)
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
