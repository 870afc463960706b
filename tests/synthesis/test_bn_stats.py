"""BatchNorm input statistics: recorded in call order, correct, on any `_BatchNorm` subclass."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from dfq.synthesis.bn_stats import (
    BatchNormStatistics,
    NoBatchNormError,
    batchnorm_layers,
    channel_statistics,
)


def test_records_each_layer_input_statistics_in_call_order(tiny_entry):
    model = tiny_entry.module
    x = torch.randn(6, 3, 8, 8)
    with BatchNormStatistics(model, per_sample=True) as recorder:
        model(x)
    assert [s.name for s in recorder.layers] == ["bn1", "bn2"]
    first = recorder.layers[0]
    conv_out = model.conv1(x)
    torch.testing.assert_close(first.batch_mean, conv_out.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(first.batch_var, conv_out.var(dim=(0, 2, 3), unbiased=False))
    torch.testing.assert_close(first.sample_mean, conv_out.mean(dim=(2, 3)))
    assert first.elements == 6 * 8 * 8
    assert first.running_var is model.bn1.running_var
    model(x)  # outside the context: hooks are gone
    assert len(recorder.layers) == 2


def test_model_without_batchnorm_gets_a_clear_error(tiny_no_bn_entry):
    with pytest.raises(NoBatchNormError, match=r"'tiny_no_bn'.*generator=inception"):
        BatchNormStatistics(tiny_no_bn_entry.module, tiny_no_bn_entry.name)


def test_timm_batchnorm_act_layers_are_found_and_hooked():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4), nn.Conv2d(4, 4, 3), BatchNormAct2d(4)).eval()
    assert [name for name, _ in batchnorm_layers(model)] == ["1", "3"]
    with BatchNormStatistics(model) as recorder:
        model(torch.randn(2, 3, 8, 8))
    assert [s.name for s in recorder.layers] == ["1", "3"]
    assert recorder.layers[1].batch_mean.shape == (4,)


def test_layers_without_running_statistics_are_skipped():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(NoBatchNormError):
        BatchNormStatistics(model, "untracked")


@pytest.mark.parametrize(
    ("shape", "layout"),
    [((8, 4, 5, 5), "rows"), ((8, 4, 5, 5), "channels_last"), ((16, 3), "rows"), ((4, 6, 3, 3, 2), "rows")],
)
def test_channel_statistics_and_their_gradient_match_var_mean(shape, layout):
    """Both reductions: row sums (contiguous fp32 on the CPU) and the Welford kernel (other layouts)."""
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).float()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    mean, var = channel_statistics(x)
    dims = [d for d in range(x.dim()) if d != 1]
    ref_var, ref_mean = torch.var_mean(x, dim=dims, correction=0)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var, rtol=1e-5, atol=1e-6)
    g_mean, g_var = torch.randn_like(mean), torch.randn_like(var)
    (grad,) = torch.autograd.grad((mean * g_mean).sum() + (var * g_var).sum(), x)
    (ref,) = torch.autograd.grad((ref_mean * g_mean).sum() + (ref_var * g_var).sum(), x)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-6)


def test_paused_recorder_keeps_its_hooks_but_records_nothing(tiny_entry):
    model = tiny_entry.module
    with BatchNormStatistics(model) as recorder:
        recorder.recording = False
        model(torch.randn(2, 3, 8, 8))
        assert recorder.layers == [] and len(model.bn1._forward_pre_hooks) == 1
