"""BatchNorm input statistics: recorded in call order, correct, on any `_BatchNorm` subclass."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from dfq.synthesis.bn_stats import BatchNormStatistics, NoBatchNormError, batchnorm_layers


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
