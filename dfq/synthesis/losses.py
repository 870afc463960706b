"""Loss terms of data synthesis, each a function of one step's `LossContext`, chosen by name.

BN terms return one value per BN layer; the module weights and sums them and logs each layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfq.synthesis.bn_stats import LayerStatistics, per_sample_statistics

INPUT_EPS = 1e-6  # ZeroQ's epsilon under the input's standard deviation


@dataclass
class LossContext:
    """Everything a loss term may look at after one teacher forward pass."""

    inputs: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor | None
    bn: list[LayerStatistics]
    target_probability: float = 1.0  # cross_entropy stops pushing a sample once its target reaches this


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
    """L2 distances of the batch's per-channel mean and std to the running ones (not squared): a
    batch-statistics form of ZeroQ's objective, common in later re-implementations."""
    batch_std = torch.sqrt(layer.batch_var + layer.eps)
    running_std = torch.sqrt(layer.running_var + layer.eps)
    return torch.linalg.vector_norm(layer.batch_mean - layer.running_mean) + torch.linalg.vector_norm(
        batch_std - running_std
    )


def bn_sample_l2_distance(layer: LayerStatistics) -> torch.Tensor:
    """ZeroQ (Cai et al., CVPR 2020), as in its published code: each sample's own per-channel mean and
    std (over H x W) against the running ones, squared L2 distance, averaged over the samples."""
    if layer.sample_mean is None or layer.sample_var is None:
        raise ValueError("bn_sample_l2 needs per-sample statistics: BatchNormStatistics(per_sample=True)")
    sample_std = torch.sqrt(layer.sample_var + layer.eps)
    running_std = torch.sqrt(layer.running_var + layer.eps)
    count = layer.sample_mean.shape[0]
    mean_term = (layer.sample_mean - layer.running_mean).pow(2).sum() / count
    return mean_term + (sample_std - running_std).pow(2).sum() / count


def bn_moment_distance(layer: LayerStatistics) -> torch.Tensor:
    """DeepInversion (Yin et al., CVPR 2020) feature loss R_feature: ||mu - mu_run||_2 + ||var - var_run||_2
    of the batch statistics (norms, not squared)."""
    return torch.linalg.vector_norm(layer.batch_mean - layer.running_mean) + torch.linalg.vector_norm(
        layer.batch_var - layer.running_var
    )


def cross_entropy(ctx: LossContext) -> torch.Tensor:
    """Cross-entropy of the teacher's logits to the target labels (Inception-style class conditioning),
    averaged over the batch. Samples whose target probability has reached `ctx.target_probability`
    contribute nothing, so the class logit is not driven past what real images of the class reach."""
    if ctx.labels is None:
        raise ValueError("cross_entropy needs target labels: set generator.labels=balanced")
    if ctx.target_probability >= 1.0:
        return F.cross_entropy(ctx.logits, ctx.labels)
    per_sample = F.cross_entropy(ctx.logits, ctx.labels, reduction="none")
    reached = per_sample.detach() <= -math.log(ctx.target_probability)
    return per_sample.masked_fill(reached, 0.0).mean()


HAST_GAMMA = 2.0  # HAST's focusing exponent for CIFAR-10 (lihuantong/HAST, run_generate_cifar10.sh)


def hard_cross_entropy(ctx: LossContext) -> torch.Tensor:
    """HAST (Li et al., CVPR 2023): cross-entropy to the target labels weighted by each sample's
    difficulty (1 - p_target)^2, focal-style, so synthesis keeps samples the teacher finds hard
    instead of driving every one to certainty (HAST's weight for CIFAR-10: 10)."""
    if ctx.labels is None:
        raise ValueError("hard_cross_entropy needs target labels: set generator.labels=balanced")
    per_sample = F.cross_entropy(ctx.logits, ctx.labels, reduction="none")
    difficulty = 1.0 - torch.exp(-per_sample)  # 1 - p_target, part of the gradient as in focal loss
    return (difficulty.pow(HAST_GAMMA) * per_sample).mean()


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


def neighbour_differences(x: torch.Tensor) -> list[torch.Tensor]:
    """Differences of each pixel to its right, lower, and two diagonal neighbours."""
    return [
        x[..., :, :-1] - x[..., :, 1:],
        x[..., :-1, :] - x[..., 1:, :],
        x[..., 1:, :-1] - x[..., :-1, 1:],
        x[..., :-1, :-1] - x[..., 1:, 1:],
    ]


def total_variation_norm(ctx: LossContext) -> torch.Tensor:
    """DeepInversion (Yin et al., CVPR 2020) R_TV: sum over the four neighbour directions (two of them
    diagonal) of the Frobenius norm of the whole batch's pixel differences."""
    return sum(torch.linalg.vector_norm(d) for d in neighbour_differences(ctx.inputs))


def image_norm(ctx: LossContext) -> torch.Tensor:
    """DeepInversion R_l2: each image's L2 norm, averaged over the batch."""
    return torch.linalg.vector_norm(ctx.inputs.flatten(1), dim=1).mean()


def input_sample_l2_distance(ctx: LossContext) -> torch.Tensor:
    """ZeroQ's input-layer term: each image's per-channel mean and std against N(0, 1) (the normalized
    data's statistics), squared L2 distance averaged over the images."""
    mean, var = per_sample_statistics(ctx.inputs)
    count = mean.shape[0]
    return (mean.pow(2).sum() + (torch.sqrt(var + INPUT_EPS) - 1).pow(2).sum()) / count


BN_LOSSES: dict[str, Callable[[LayerStatistics], torch.Tensor]] = {
    "bn_kl": bn_kl_divergence,
    "bn_l2": bn_l2_distance,
    "bn_sample_l2": bn_sample_l2_distance,
    "bn_moments": bn_moment_distance,
}
PER_SAMPLE_BN_LOSSES = frozenset({"bn_sample_l2"})  # need BatchNormStatistics(per_sample=True)
INPUT_LOSSES: dict[str, Callable[[LossContext], torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "hard_cross_entropy": hard_cross_entropy,
    "tv_l2": total_variation_l2,
    "tv_l1": total_variation_l1,
    "tv_norm": total_variation_norm,
    "l2": l2_prior,
    "image_norm": image_norm,
    "input_sample_l2": input_sample_l2_distance,
}
LOSS_NAMES = sorted([*BN_LOSSES, *INPUT_LOSSES])
LABELLED_LOSSES = ("cross_entropy", "hard_cross_entropy")  # need target labels (generator.labels)


def per_layer(name: str, ctx: LossContext) -> torch.Tensor:
    """One BN loss evaluated on every recorded layer, stacked (layers,)."""
    return torch.stack([BN_LOSSES[name](layer) for layer in ctx.bn])
