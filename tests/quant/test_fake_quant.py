"""Rounding, integer grids and the fake-quantize operation against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dfq.quant.fake_quant import (
    IntegerGrid,
    fake_quantize,
    fake_quantize_fixed,
    fake_quantize_learned,
    integer_range,
    quantize_to_int,
    round_ste,
    scale_gradient,
)


def test_round_ste_rounds_forward_and_passes_gradient_straight_through():
    x = torch.tensor([-1.5, -0.4, 0.5, 1.5, 2.6], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [-2.0, -0.0, 0.0, 2.0, 3.0]  # half to even, as ONNX QuantizeLinear
    (y * torch.arange(5.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("bits", "signed", "narrow", "expected"),
    [(8, True, False, (-128, 127)), (8, True, True, (-127, 127)), (8, False, False, (0, 255)),
     (4, False, True, (1, 15)), (2, True, False, (-2, 1))],
)  # fmt: skip
def test_integer_range(bits, signed, narrow, expected):
    assert integer_range(bits, signed, narrow) == expected


def test_fake_quantize_matches_hand_computed_codes():
    # s = 0.1, z = 3, grid [0, 15]: codes round(x/s) + z = -7 -> 0, 3, 6, 23 -> 15
    x = torch.tensor([-1.0, 0.04, 0.26, 2.0])
    out = fake_quantize(x, torch.tensor(0.1), torch.tensor(3.0), 0, 15)
    assert torch.allclose(out, torch.tensor([-0.3, 0.0, 0.3, 1.2]))
    codes = quantize_to_int(x, torch.tensor(0.1), torch.tensor(3.0), 0, 15)
    assert codes.tolist() == [0.0, 3.0, 6.0, 15.0]


def test_fake_quantize_gradient_is_one_inside_and_zero_where_clipped():
    x = torch.tensor([-1.0, 0.04, 0.26, 2.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.1), torch.tensor(3.0), 0, 15).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_scale_gradient_keeps_value_and_scales_gradient():
    s = torch.tensor(2.0, requires_grad=True)
    y = scale_gradient(s, 0.25)
    assert y.item() == 2.0
    (3 * y).backward()
    assert s.grad.item() == pytest.approx(0.75)


def test_asymmetric_grid_hand_computed():
    # [-1, 3] on 4 bits: s = 4/15, z = round(1 / s) = round(3.75) = 4
    scale, zero_point, qmin, qmax = IntegerGrid(4).affine(torch.tensor(-1.0), torch.tensor(3.0))
    assert (qmin, qmax) == (0, 15)
    assert scale.item() == pytest.approx(4 / 15)
    assert zero_point.item() == 4


def test_symmetric_grid_is_signed_unless_range_is_non_negative():
    scale, zero_point, qmin, qmax = IntegerGrid(8, symmetric=True).affine(
        torch.tensor(-1.0), torch.tensor(3.0)
    )
    assert (qmin, qmax, zero_point.item()) == (-128, 127, 0)
    assert scale.item() == pytest.approx(3 / 127)
    narrow = IntegerGrid(8, symmetric=True, narrow_range=True).affine(torch.tensor(-1.0), torch.tensor(3.0))
    assert narrow[2:] == (-127, 127)
    # after a ReLU the range is [0, 2.55]: an unsigned grid with step 0.01 represents it exactly
    scale, zero_point, qmin, qmax = IntegerGrid(8, symmetric=True).affine(
        torch.tensor(0.0), torch.tensor(2.55)
    )
    assert (qmin, qmax, zero_point.item()) == (0, 255, 0)
    assert scale.item() == pytest.approx(0.01)


def test_grid_per_channel_and_range_widened_to_include_zero():
    low, high = torch.tensor([0.5, -2.0]), torch.tensor([1.5, -1.0])  # both exclude 0: widened
    scale, zero_point, _, _ = IntegerGrid(2).affine(low, high)
    assert torch.allclose(scale, torch.tensor([1.5 / 3, 2.0 / 3]))
    assert zero_point.tolist() == [0.0, 3.0]
    assert math.isfinite(IntegerGrid(8).affine(torch.tensor(0.0), torch.tensor(0.0))[0].item())


def test_real_valued_offset_puts_the_grid_exactly_on_the_minimum():
    # [-0.3, 0.5] on 2 bits: s = 0.8/3; integer z = round(1.125) = 1 puts levels at -s, 0, s, 2s;
    # a real-valued offset z = 1.125 puts them at -0.3, -0.3 + s, -0.3 + 2s, 0.5
    low, high = torch.tensor(-0.3), torch.tensor(0.5)
    s = 0.8 / 3
    integer = IntegerGrid(2).affine(low, high)
    assert integer[1].item() == 1.0
    scale, zero_point, qmin, qmax = IntegerGrid(2, integer_zero_point=False).affine(low, high)
    assert zero_point.item() == pytest.approx(1.125)
    x = torch.tensor([-0.31, -0.1, 0.15, 0.49, 0.6])
    expected = torch.tensor([-0.3, -0.3 + s, -0.3 + 2 * s, 0.5, 0.5])
    assert torch.allclose(fake_quantize(x, scale, zero_point, qmin, qmax), expected, atol=1e-6)
    assert quantize_to_int(x, scale, zero_point, qmin, qmax).tolist() == [0.0, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("fractional", [False, True])
def test_fused_fixed_fake_quantize_matches_the_autograd_one_in_value_and_gradient(fractional):
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5) * 3).requires_grad_()
    scale = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    zero_point = torch.tensor([3.0, 7.25, 0.5] if fractional else [3.0, 7.0, 0.0]).view(1, 3, 1, 1)
    expected = fake_quantize(x, scale, zero_point, 0, 15)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    fused = fake_quantize_fixed(x, scale, zero_point, 0, 15, fractional)
    (grad,) = torch.autograd.grad(fused.sum(), x)
    assert torch.equal(fused, expected)
    assert torch.equal(grad, expected_grad)
    assert 0 < grad.sum() < grad.numel()  # some values were clipped (no gradient), most were not


@pytest.mark.parametrize(
    ("scale_shape", "zero_point"),
    [((), torch.tensor(3.0)), ((), torch.tensor(2.4)), ((1, 4, 1, 1), torch.tensor([1.0, 2.0, 3.0, 0.4]))],
)
def test_fused_learned_step_matches_the_autograd_lsq_estimator(scale_shape, zero_point):
    torch.manual_seed(0)
    zero_point = zero_point.reshape(scale_shape)
    x = (torch.randn(8, 4, 5, 5) * 3).requires_grad_()
    scale = (torch.rand(scale_shape) * 0.5 + 0.2).requires_grad_()
    weights = torch.randn(8, 4, 5, 5)
    reference = fake_quantize(x, scale, zero_point, 0, 15)
    fused = fake_quantize_learned(x, scale, zero_point, 0, 15)
    assert torch.equal(reference, fused)
    expected = torch.autograd.grad((reference * weights).sum(), (x, scale))
    got = torch.autograd.grad((fused * weights).sum(), (x, scale))
    assert torch.allclose(expected[0], got[0], atol=1e-6)  # the reference multiplies by s, then 1/s
    assert got[1].shape == scale.shape and torch.allclose(expected[1], got[1], rtol=1e-4, atol=1e-3)
