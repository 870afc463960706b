"""BatchNorm folding (pairs from the traced graph, outputs unchanged) and BN re-estimation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfq.models.cifar_resnet import cifar_resnet
from dfq.quant.bn import FoldingError, fold_batchnorm, foldable_pairs, reestimate_batchnorm


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding has something to fold."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(c, generator=generator))
            module.bias.data.copy_(torch.randn(c, generator=generator))
    return model.eval()


class Decoy(nn.Module):
    """`bn` follows `conv_b`, declared after a same-shaped `conv_a`; `conv_c` feeds a BN and a skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv_c = nn.Conv2d(8, 8, 1)
        self.bn_c = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn_fc = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_a(x) + self.bn(self.conv_b(x))
        z = self.conv_c(y)
        y = self.bn_c(z) + z  # conv_c's output is used twice: folding would change the skip
        return self.bn_fc(self.fc(y.mean(dim=(2, 3))))


def test_pairs_come_from_the_graph_not_from_positions_or_shapes():
    assert foldable_pairs(Decoy()) == [("conv_b", "bn"), ("fc", "bn_fc")]


def test_folded_decoy_keeps_its_outputs_and_the_original_keeps_its_bn():
    model = randomize_bn(Decoy())
    x = torch.randn(4, 3, 8, 8)
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.Identity) and isinstance(folded.bn_fc, nn.Identity)
    assert isinstance(folded.bn_c, nn.BatchNorm2d) and isinstance(model.bn, nn.BatchNorm2d)
    assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)


def test_folded_tiny_net_equals_original_within_1e_5(tiny_entry):
    x = torch.randn(8, 3, 8, 8)
    folded = fold_batchnorm(tiny_entry.module)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), tiny_entry.module(x), atol=1e-5, rtol=0)


def test_folded_resnet20_equals_original_within_1e_5():
    torch.manual_seed(0)
    model = randomize_bn(cifar_resnet(20)).double()
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)
    assert set(model.state_dict()) != set(folded.state_dict())  # the copy differs, not the original


def test_untraceable_model_gives_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(FoldingError, match="torch.fx could not trace"):
        fold_batchnorm(DataDependent())


def test_reestimation_sets_the_statistics_of_the_samples():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(20, 3, 6, 6) * 2 + 1
    reestimate_batchnorm(model, x, batch_size=64)  # one batch: the batch statistics exactly
    features = model[0](x)
    bn = model[1]
    assert torch.allclose(bn.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, features.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    assert not bn.training and bn.momentum == 0.1  # restored
    mean_of_batches = torch.stack([model[0](x[i : i + 5]).mean(dim=(0, 2, 3)) for i in range(0, 20, 5)])
    reestimate_batchnorm(model, x, batch_size=5)  # several batches: their plain average
    assert torch.allclose(bn.running_mean, mean_of_batches.mean(0), atol=1e-5)
