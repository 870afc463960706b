"""The Quantizer module: hand-computed outputs, STE, LSQ and PACT gradients, modes and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dfq.quant.modules import QuantConv2d, QuantLinear
from dfq.quant.quantizer import Quantizer, QuantSpec


def calibrated(
    spec: QuantSpec, data: torch.Tensor, channel_axis: int = 0, batched: bool = False
) -> Quantizer:
    quantizer = Quantizer(spec, channel_axis, batched)
    quantizer.observing = True
    quantizer(data)
    quantizer.observing = False
    quantizer.freeze()
    return quantizer


def test_per_tensor_asymmetric_matches_hand_computation():
    # range [-1, 3] on 2 bits: s = 4/3, z = round(0.75) = 1; codes of x: round(x/s) + 1
    quantizer = calibrated(QuantSpec(bits=2), torch.tensor([-1.0, 3.0]))
    x = torch.tensor([-1.0, 0.5, 0.7, 2.1, 3.0, 9.0])
    s = 4 / 3
    expected = torch.tensor([-1, 0, 1, 2, 2, 2]) * s  # codes 0, 1, 2, 3, 3, 3 minus z = 1
    assert torch.allclose(quantizer(x), expected)


def test_per_channel_symmetric_weights():
    weight = torch.tensor([[0.5, -1.27], [0.02, 0.0635]])  # channel max |w| 1.27 and 0.0635
    quantizer = calibrated(QuantSpec(bits=8, granularity="per_channel", symmetric=True), weight)
    assert torch.allclose(quantizer.scale, torch.tensor([0.01, 0.0005]))
    assert torch.allclose(quantizer(weight), torch.tensor([[0.5, -1.27], [0.02, 0.0635]]), atol=1e-7)
    assert (quantizer.qmin, quantizer.qmax) == (-128, 127)


def test_post_relu_activations_use_an_unsigned_grid_and_lose_nothing_on_it():
    data = torch.tensor([0.0, 0.25, 0.5, 3.75])
    quantizer = calibrated(QuantSpec(bits=4, symmetric=True), data)
    assert (quantizer.qmin, quantizer.qmax) == (0, 15)
    assert torch.equal(quantizer(data), data)  # multiples of 0.25 on a 0.25 grid


def test_ste_passes_gradients_inside_the_range_only():
    quantizer = calibrated(QuantSpec(bits=4), torch.tensor([-1.0, 2.0]))
    x = torch.tensor([-3.0, -0.4, 0.3, 1.9, 5.0], requires_grad=True)
    quantizer(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_step_size_gradient_matches_the_paper():
    # Esser et al. (ICLR 2020): d xq / d s = -x/s + round(x/s) inside, -Q_N or Q_P where clipped,
    # times g = 1 / sqrt(N * Q_P). Symmetric 4 bits: Q_N = 8, Q_P = 7; s = 0.5 chosen by hand.
    spec = QuantSpec(bits=4, symmetric=True, learnable=True)
    quantizer = calibrated(spec, torch.tensor([-3.5, 3.5]))
    assert isinstance(quantizer.scale, nn.Parameter) and quantizer.scale.item() == pytest.approx(0.5)
    x = torch.tensor([-5.0, -0.7, 0.2, 0.9, 4.0], requires_grad=True)  # x/s = -10, -1.4, 0.4, 1.8, 8
    quantizer(x).sum().backward()
    per_value = [-8.0, -1 + 1.4, 0 - 0.4, 2 - 1.8, 7.0]
    assert quantizer.scale.grad.item() == pytest.approx(sum(per_value) / math.sqrt(5 * 7), rel=1e-5)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_gradient_scale_counts_one_sample_for_activations():
    quantizer = calibrated(QuantSpec(bits=4, symmetric=True, learnable=True), torch.tensor([-3.5, 3.5]))
    quantizer.batched = True
    x = torch.full((4, 3), 0.9)  # x/s = 1.8 everywhere: -1.8 + 2 = 0.2 per value
    quantizer(x).sum().backward()
    assert quantizer.scale.grad.item() == pytest.approx(12 * 0.2 / math.sqrt(3 * 7), rel=1e-5)


def test_learnable_clipping_gradients_are_pact():
    quantizer = calibrated(QuantSpec(bits=4, learnable_clip=True), torch.tensor([-1.0, 2.0]))
    assert quantizer.clip_low.item() == -1.0 and quantizer.clip_high.item() == 2.0
    x = torch.tensor([-3.0, -0.4, 0.3, 2.5, 5.0], requires_grad=True)
    out = quantizer(x)
    assert out[0].item() == pytest.approx(-1.0) and out[-1].item() == pytest.approx(2.0)
    out.sum().backward()
    assert quantizer.clip_high.grad.item() == 2.0  # two values above the upper bound
    assert quantizer.clip_low.grad.item() == 1.0  # one below the lower bound
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        quantizer.clip_high.fill_(4.0)  # a learned bound moves the grid: s = 5 / 15
    scale, _, _, _ = quantizer.parameters_now()
    assert scale.item() == pytest.approx(5 / 15)


def test_observing_mode_passes_values_through_and_use_before_calibration_fails():
    quantizer = Quantizer(QuantSpec(bits=2))
    quantizer.observing = True
    x = torch.tensor([0.1234, -0.77])
    assert torch.equal(quantizer(x), x)
    with pytest.raises(RuntimeError, match="calibrat"):
        Quantizer(QuantSpec(bits=2))(x)


def test_16_and_32_bits_leave_tensors_in_floating_point():
    conv = nn.Conv2d(3, 4, 3)
    quantized = QuantConv2d.from_float(conv, QuantSpec(bits=16), QuantSpec(bits=32))
    assert isinstance(quantized.weight_quantizer, nn.Identity)
    assert isinstance(quantized.input_quantizer, nn.Identity)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(quantized(x), conv(x))
    linear = nn.Linear(5, 2)
    assert torch.equal(QuantLinear.from_float(linear, None, None)(x[:, 0, 0, :5]), linear(x[:, 0, 0, :5]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bits": 9}, "bits=9"),
        ({"bits": 1}, "bits=1"),
        ({"granularity": "per_row"}, "granularity"),
        ({"learnable": True, "learnable_clip": True}, "exclude"),
        ({"learnable": True, "dynamic": True}, "dynamic"),
    ],
)
def test_invalid_specs_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**options)
