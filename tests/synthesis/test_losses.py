"""Loss terms of data synthesis against hand-computed values; BN terms vanish when statistics match."""

from __future__ import annotations

import math

import pytest
import torch

from dfq.synthesis.bn_stats import LayerStatistics, per_sample_statistics
from dfq.synthesis.losses import (
    BN_LOSSES,
    INPUT_LOSSES,
    LossContext,
    bn_kl_divergence,
    bn_moment_distance,
    bn_sample_l2_distance,
    cross_entropy,
    gaussian_kl,
    hard_cross_entropy,
    image_norm,
    input_sample_l2_distance,
    total_variation_norm,
)


def layer(batch_mean, batch_var, running_mean, running_var, eps=0.0, **extra) -> LayerStatistics:
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return LayerStatistics(
        "bn",
        as_tensor(batch_mean),
        as_tensor(batch_var),
        as_tensor(running_mean),
        as_tensor(running_var),
        eps,
        **extra,
    )


def test_gaussian_kl_matches_hand_computed_value():
    # KL(N(1, 4) || N(0, 1)) = 1/2 log(1/4) + (4 + 1) / 2 - 1/2 = 2 - log 2
    value = gaussian_kl(*(torch.tensor(v) for v in (1.0, 4.0, 0.0, 1.0)))
    assert value.item() == pytest.approx(2.0 - math.log(2.0), rel=1e-6)


def test_bn_kl_is_the_papers_direction_summed_over_channels_with_eps():
    # channel 0: running N(0, 1), batch N(1, 4): KL = 1/2 log 4 + (1 + 1) / 8 - 1/2 = log 2 - 1/4
    # channel 1: running N(2, 0.5), batch N(2, 0.5): zero
    stats = layer([1.0, 2.0], [4.0, 0.5], [0.0, 2.0], [1.0, 0.5])
    assert bn_kl_divergence(stats).item() == pytest.approx(math.log(2.0) - 0.25, rel=1e-9)
    # eps is added to both variances: running var 0 and batch var 0 are fine and give zero
    assert bn_kl_divergence(layer([3.0], [0.0], [3.0], [0.0], eps=1e-5)).item() == pytest.approx(
        0.0, abs=1e-12
    )


@pytest.mark.parametrize("name", sorted(BN_LOSSES))
def test_every_bn_loss_is_zero_when_statistics_match(name: str):
    mean, var = [0.5, -1.0, 2.0], [1.5, 0.25, 3.0]
    per_sample = {
        "sample_mean": torch.tensor([mean, mean], dtype=torch.float64),
        "sample_var": torch.tensor([var, var], dtype=torch.float64),
    }
    stats = layer(mean, var, mean, var, eps=1e-5, **per_sample)
    assert BN_LOSSES[name](stats).item() == pytest.approx(0.0, abs=1e-9)
    mismatched = layer([m + 1 for m in mean], var, mean, var, eps=1e-5, **per_sample)
    mismatched.sample_mean = per_sample["sample_mean"] + 1
    assert BN_LOSSES[name](mismatched).item() > 0.1


def test_deepinversion_feature_loss_is_a_sum_of_two_norms():
    stats = layer([3.0, 0.0], [1.0, 1.0], [0.0, 4.0], [1.0, 1.0 + 12.0])
    assert bn_moment_distance(stats).item() == pytest.approx(5.0 + 12.0)


def test_zeroq_loss_averages_squared_distances_over_samples():
    # running N(0, 1); sample 1: mean 1, std 1 -> 1; sample 2: mean 0, std 3 -> 4; average 2.5
    stats = layer(
        [0.0],
        [1.0],
        [0.0],
        [1.0],
        sample_mean=torch.tensor([[1.0], [0.0]]),
        sample_var=torch.tensor([[1.0], [9.0]]),
    )
    assert bn_sample_l2_distance(stats).item() == pytest.approx(2.5)


def test_per_sample_statistics_are_unbiased_over_positions():
    x = torch.tensor([[[[1.0, 3.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    mean, var = per_sample_statistics(x)
    assert mean.flatten().tolist() == [2.0, 0.0]
    assert var.flatten().tolist() == [2.0, 0.0]  # ((1-2)^2 + (3-2)^2) / (2 - 1)


def context(x: torch.Tensor, logits=None, labels=None) -> LossContext:
    return LossContext(x, torch.zeros(len(x), 3) if logits is None else logits, labels, [])


def test_total_variation_norm_uses_four_directions():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # a vertical edge
    # horizontal: two differences of 1 -> sqrt 2; vertical: 0; each diagonal: one difference of 1 -> 1
    assert total_variation_norm(context(x)).item() == pytest.approx(math.sqrt(2.0) + 2.0)


def test_image_norm_and_zeroq_input_term():
    x = torch.zeros(2, 1, 2, 2)
    x[0] = 3.0  # norm 6 (four pixels of 3); per-sample mean 3, std sqrt(eps) -> 9 + ~1
    assert image_norm(context(x)).item() == pytest.approx(3.0)
    assert input_sample_l2_distance(context(x)).item() == pytest.approx((9.0 + 1.0 + 1.0) / 2, rel=1e-2)


def test_cross_entropy_needs_labels_and_matches_torch():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(context(torch.zeros(1, 1, 2, 2), logits))
    value = cross_entropy(context(torch.zeros(1, 1, 2, 2), logits, torch.tensor([0])))
    assert value.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)))


def test_cross_entropy_leaves_samples_alone_once_their_target_is_likely_enough():
    # sample 0: target probability e^2 / (e^2 + 2) = 0.787; sample 1: 1/3
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    ctx = LossContext(torch.zeros(2, 1, 2, 2), logits, labels, [], target_probability=0.7)
    value = cross_entropy(ctx)
    assert value.item() == pytest.approx(math.log(3.0) / 2)  # only sample 1, averaged over both
    value.backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1].abs().sum() > 0
    uncapped = cross_entropy(LossContext(ctx.inputs, logits, labels, []))
    assert uncapped.item() == pytest.approx((-math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(3.0)) / 2)


def test_hard_cross_entropy_weights_each_sample_by_its_difficulty_squared():
    # target probabilities 0.5 and 0.9: weights 0.25 and 0.01 (HAST's gamma 2)
    logits = torch.tensor([[0.0, 0.0], [math.log(9.0), 0.0]])
    value = hard_cross_entropy(LossContext(torch.zeros(2, 1, 2, 2), logits, torch.tensor([0, 0]), []))
    assert value.item() == pytest.approx((0.25 * math.log(2.0) + 0.01 * -math.log(0.9)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="hard_cross_entropy needs target labels"):
        hard_cross_entropy(LossContext(torch.zeros(2, 1, 2, 2), logits, None, []))


def test_input_loss_registry_names_each_published_term():
    assert {"cross_entropy", "tv_l2", "tv_l1", "tv_norm", "l2", "image_norm", "input_sample_l2"} <= set(
        INPUT_LOSSES
    )
    assert {"bn_kl", "bn_l2", "bn_sample_l2", "bn_moments"} <= set(BN_LOSSES)
