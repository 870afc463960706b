"""Size and BOPs accounting against a hand count on TinyBNNet (3x8x8 input)."""

import pytest
import torch

from dfq.quant.mixed_precision.cost import layer_shapes, model_size
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from tests.conftest import TinyBNNet

EXAMPLE = torch.randn(2, 3, 8, 8)


def test_layer_shapes_match_a_hand_count():
    shapes = layer_shapes(TinyBNNet(), EXAMPLE)
    # conv1 3->8 3x3 on 8x8: 512 outputs x 27 MACs; conv2 8->8 stride 2: 128 x 72; fc 8->4
    assert {n: (s.weights, s.biases, s.channels, s.macs) for n, s in shapes.items()} == {
        "conv1": (216, 0, 8, 13824),
        "conv2": (576, 0, 8, 9216),
        "fc": (32, 4, 4, 32),
    }


def test_w4a4_size_and_bops_match_a_hand_count():
    student = quantize(TinyBNNet(), QuantPolicy(w_bits=4, a_bits=4), EXAMPLE)
    size = model_size(student, EXAMPLE)
    # weights at 4 bits, per-channel float32 scale + int32 zero point, one (scale, zero point) per
    # input quantizer, the fc bias and the two BN layers' 32 parameters at 32 bits
    conv1 = 216 * 4 + 8 * 64 + 64
    conv2 = 576 * 4 + 8 * 64 + 64
    fc = 32 * 4 + 4 * 32 + 4 * 64 + 64
    assert size["weight_bytes"] == (conv1 + conv2 + fc + 32 * 32) / 8 == 740
    assert size["bops"] == (13824 + 9216 + 32) * 4 * 4
    assert size["avg_weight_bits"] == 4


def test_a_layer_override_and_a_float_layer_change_the_count():
    policy = QuantPolicy(w_bits=4, a_bits=4, overrides={"conv2": {"w_bits": 8}}, exclude=["fc"])
    size = model_size(quantize(TinyBNNet(), policy, EXAMPLE), EXAMPLE)
    assert size["bops"] == 13824 * 16 + 9216 * 8 * 4 + 32 * 32 * 32
    assert size["avg_weight_bits"] == pytest.approx((216 * 4 + 576 * 8 + 32 * 32) / 824)
    fc_float = 32 * 32 + 4 * 32
    assert size["weight_bytes"] == (216 * 4 + 576 + 576 * 8 + 576 + fc_float + 32 * 32) / 8
