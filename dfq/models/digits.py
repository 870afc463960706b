"""A small BatchNorm CNN for scikit-learn's 8x8 digits: dfq's embedded, offline default teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dfq.io import save_torch

log = logging.getLogger(__name__)


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU layers of the given widths (stride 2 at `downsample_at`), average pool, linear."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 32),
        downsample_at: int = 1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, width in enumerate(widths):
            stride = 2 if index == downsample_at else 1
            layers += [
                nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def train_teacher(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    path: str | Path,
    epochs: int = 40,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Train `model` with SGD + cosine on `train_set` and cache its state dict at `path`.

    Used for the embedded default, whose teacher is trained on first use rather than downloaded.
    """
    log.info("training the teacher on %d images (%d epochs), cached at %s", len(train_set), epochs, path)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    save_torch({"state_dict": model.state_dict()}, path)
    return model
