"""Sensitivities rank the layer whose quantization hurts the output more as more sensitive."""

import pytest
import torch
from torch import nn

from dfq.quant.mixed_precision.sensitivity import (
    SENSITIVITIES,
    SensitivityOptions,
    hessian_traces,
    quantized_weight,
    zeroq_input_sensitivity,
)
from dfq.quant.quantizer import QuantSpec

SPEC = QuantSpec(granularity="per_channel", dynamic=True)


def constructed_network() -> nn.Sequential:
    """fc1 with Gaussian weights (2-bit rounding moves them), fc2 with weights already on any
    per-channel grid (each row holds only its minimum 0 and maximum 1): quantizing fc2 changes nothing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight.copy_((torch.rand(3, 8) > 0.5).float())
        net[2].weight[:, 0], net[2].weight[:, 1] = 0.0, 1.0
    return net.eval()


def test_weights_on_the_grid_are_left_alone_and_others_move():
    net = constructed_network()
    assert torch.equal(quantized_weight(net[2].weight, SPEC, 2), net[2].weight)
    assert not torch.allclose(quantized_weight(net[0].weight, SPEC, 2), net[0].weight)


@pytest.mark.parametrize("method", sorted(SENSITIVITIES))
def test_the_layer_that_hurts_more_is_more_sensitive(method):
    net = constructed_network()
    result = SENSITIVITIES[method](
        net, torch.randn(64, 6), ["0", "2"], [2, 4, 8], SPEC, SensitivityOptions(32)
    )
    assert result["0"][2] > result["2"][2] + 1e-6
    assert result["2"][2] == pytest.approx(0.0, abs=1e-9)
    assert result["0"][2] > result["0"][4] > result["0"][8]  # fewer bits, larger sensitivity


class Step(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).float()


def test_the_layer_whose_input_quantization_hurts_more_is_more_sensitive():
    """fc2's input is 0 or 1 (a step function), which every grid over [0, 1] holds exactly; fc1's is
    Gaussian."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), Step(), nn.Linear(8, 3)).eval()
    spec = QuantSpec(granularity="per_tensor")
    result = zeroq_input_sensitivity(
        net, torch.randn(64, 6), ["0", "2"], [2, 4, 8], spec, SensitivityOptions(32)
    )
    assert result["2"][2] == pytest.approx(0.0, abs=1e-9)
    assert result["0"][2] > result["0"][4] >= result["0"][8]  # 8 bits flip no sign of fc1's output here
    assert not net[0]._forward_pre_hooks  # the measuring hooks are gone


def test_hutchinson_trace_approaches_the_exact_hessian_trace():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4)).eval()
    x = torch.randn(16, 3)
    traces = hessian_traces(net, x, ["0"], SensitivityOptions(batch_size=16, probes=400))
    weight = net[0].weight.detach()
    target = torch.log_softmax(net(x), dim=1).detach()

    def loss(w: torch.Tensor) -> torch.Tensor:
        log_q = torch.log_softmax(x @ w.T + net[0].bias.detach(), dim=1)
        return torch.nn.functional.kl_div(log_q, target, log_target=True, reduction="batchmean")

    exact = torch.autograd.functional.hessian(loss, weight).reshape(weight.numel(), -1).trace()
    assert traces["0"] == pytest.approx(float(exact), rel=0.1)
    assert float(exact) > 0
