"""Wide ResNets for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016), e.g. WRN-28-10.

Pre-activation blocks; module names follow the widely shared CIFAR WRN state dicts (`block1.layer.0.bn1`,
`block2.layer.0.convShortcut`, final `bn1` and `fc`), so such checkpoints load as published.
"""

from __future__ import annotations

import torch
from torch import nn

from dfq.models.ops import Add


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the input (or a 1x1 projection of its activation)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.projects = in_planes != planes or stride != 1
        if self.projects:  # the published name, kept so that checkpoints load
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        shortcut = self.convShortcut(activated) if self.projects else x
        return self.add(shortcut, out)


class WideStage(nn.Module):
    """`blocks` WideBlocks, the first one changing width and stride."""

    def __init__(self, in_planes: int, planes: int, blocks: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout)
                for i in range(blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: conv3x3 (16), three stages of (depth-4)/6 blocks at 16k, 32k, 64k channels, BN-ReLU,
    global average pooling, linear."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"Wide ResNet depth must be 6n+4 (10, 16, 22, 28, 40), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(widths[0], widths[1], blocks, 1, dropout)
        self.block2 = WideStage(widths[1], widths[2], blocks, 2, dropout)
        self.block3 = WideStage(widths[2], widths[3], blocks, 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn1(x))).flatten(1))


def wide_resnet(
    depth: int = 28, widen_factor: int = 10, num_classes: int = 10, dropout: float = 0.0
) -> WideResNet:
    """Build an untrained Wide ResNet (WRN-28-10 by default)."""
    return WideResNet(depth, widen_factor, num_classes, dropout)
