"""Bias correction (Nagel et al., ICCV 2019): the hand-computed shift, and zero mean output error after it."""

from __future__ import annotations

import torch
from torch import nn

from dfq.quant.bias_correction import correct_bias
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.quant.quantizer import QuantSpec

WEIGHTS_ONLY = dict(a_bits=16, weight=QuantSpec(granularity="per_channel", dynamic=True))


def test_linear_correction_is_the_weight_error_times_the_mean_input():
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.3, -0.7], [0.55, 0.1]]))
        linear.bias.copy_(torch.tensor([0.2, -0.1]))
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # mean input (1, 2)
    student = calibrate(quantize(linear, QuantPolicy(w_bits=2, **WEIGHTS_ONLY), x[:1]), x)
    # 2-bit per-channel asymmetric min-max: row 0 on [-0.7, 0.3] -> s = 1/3, z = round(2.1) = 2,
    # 0.3 -> code 3 -> 1/3 and -0.7 -> code 0 -> -2/3: error (1/30, 1/30);
    # row 1 on [0, 0.55] -> s = 0.55/3, z = 0, 0.1 -> round(0.545) = 1 -> 0.55/3: error (0, 0.55/3 - 0.1)
    error = torch.tensor([[1 / 30, 1 / 30], [0.0, 0.55 / 3 - 0.1]])
    # new bias = b - error @ E[x] = (0.2 - 0.1, -0.1 - 2 * (0.55/3 - 0.1))
    expected_bias = torch.tensor([0.1, -0.1 - 2 * (0.55 / 3 - 0.1)])
    assert torch.allclose(linear.bias.detach() - error @ torch.tensor([1.0, 2.0]), expected_bias)
    correct_bias(student, x)
    assert torch.allclose(student.bias, expected_bias, atol=1e-6)


def test_conv_without_bias_gets_one_and_the_mean_output_error_vanishes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, stride=2, bias=False), nn.ReLU(), nn.Conv2d(6, 4, 3))
    x = torch.rand(32, 3, 9, 9) + 0.5  # a non-zero mean input, so the weight error shifts the output
    student = calibrate(quantize(model, QuantPolicy(w_bits=3, **WEIGHTS_ONLY), x[:2]), x)
    first = student[0]

    def mean_error() -> torch.Tensor:
        return (first(x) - model[0](x)).mean(dim=(0, 2, 3))

    before = mean_error().abs().max()
    assert first.bias is None and before > 1e-3
    correct_bias(student, x)
    assert first.bias is not None and first.bias.shape == (6,)
    assert mean_error().abs().max() < 1e-5  # exact in expectation, padding and stride included


def test_bias_correction_through_calibrate_reduces_the_network_output_bias(tiny_entry):
    torch.manual_seed(1)
    x = torch.randn(64, 3, 8, 8) * 0.7 + 0.3
    teacher = tiny_entry.module
    policy = QuantPolicy(w_bits=2, a_bits=8)
    plain = calibrate(quantize(teacher, policy, x[:2]), x)
    corrected = calibrate(quantize(teacher, policy, x[:2]), x, bias_correction=True)
    bias = {
        name: (m(x) - teacher(x)).mean(0).abs().mean() for name, m in (("plain", plain), ("bc", corrected))
    }
    assert bias["bc"] < 0.5 * bias["plain"]
