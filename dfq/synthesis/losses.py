"""Loss terms of data synthesis, each a function of one step's `LossContext`, chosen by name.

BN terms return one value per BN layer; the module weights and sums them and logs each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfq.synthesis.bn_stats import LayerStatistics


@dataclass
class LossContext:
    """Everything a loss term may look at after one teacher forward pass."""

    inputs: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor | None
    bn: list[LayerStatistics]


def gaussian_kl(
    mean_p: torch.Tensor, var_p: torch.Tensor, mean_q: torch.Tensor, var_q: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_p, var_p) || N(mean_q, var_q)) elementwise."""
    return 0.5 * torch.log(var_q / var_p) + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5


def bn_kl_divergence(layer: LayerStatistics) -> torch.Tensor:
    """The Knowledge Within (Haroush et al., CVPR 2020), BNS: sum over channels of
    KL(N(running) || N(batch)), eps added to both variances."""
    return gaussian_kl(
        layer.running_mean,
        layer.running_var + layer.eps,
        layer.batch_mean,
        layer.batch_var + layer.eps,
    ).sum()


def bn_l2_distance(layer: LayerStatistics) -> torch.Tensor:
    """ZeroQ (Cai et al., CVPR 2020): ||mu_batch - mu_run||_2 + ||sigma_batch - sigma_run||_2."""
    batch_std = torch.sqrt(layer.batch_var + layer.eps)
    running_std = torch.sqrt(layer.running_var + layer.eps)
    return torch.linalg.vector_norm(layer.batch_mean - layer.running_mean) + torch.linalg.vector_norm(
        batch_std - running_std
    )


def bn_moment_distance(layer: LayerStatistics) -> torch.Tensor:
    """DeepInversion (Yin et al., CVPR 2020) feature loss: ||mu - mu_run||_2 + ||var - var_run||_2."""
    return torch.linalg.vector_norm(layer.batch_mean - layer.running_mean) + torch.linalg.vector_norm(
        layer.batch_var - layer.running_var
    )


def cross_entropy(ctx: LossContext) -> torch.Tensor:
    """Cross-entropy of the teacher's logits to the target labels (Inception-style class conditioning)."""
    if ctx.labels is None:
        raise ValueError("cross_entropy needs target labels: set generator.labels=balanced")
    return F.cross_entropy(ctx.logits, ctx.labels)


def total_variation_l2(ctx: LossContext) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (smoothness prior)."""
    x = ctx.inputs
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def total_variation_l1(ctx: LossContext) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels."""
    x = ctx.inputs
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def l2_prior(ctx: LossContext) -> torch.Tensor:
    """Mean squared input value: keeps images near the data mean."""
    return ctx.inputs.pow(2).mean()


BN_LOSSES: dict[str, Callable[[LayerStatistics], torch.Tensor]] = {
    "bn_kl": bn_kl_divergence,
    "bn_l2": bn_l2_distance,
    "bn_moments": bn_moment_distance,
}
INPUT_LOSSES: dict[str, Callable[[LossContext], torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "tv_l2": total_variation_l2,
    "tv_l1": total_variation_l1,
    "l2": l2_prior,
}
LOSS_NAMES = sorted([*BN_LOSSES, *INPUT_LOSSES])


def per_layer(name: str, ctx: LossContext) -> torch.Tensor:
    """One BN loss evaluated on every recorded layer, stacked (layers,)."""
    return torch.stack([BN_LOSSES[name](layer) for layer in ctx.bn])
