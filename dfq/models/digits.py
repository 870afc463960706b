"""A small BatchNorm CNN for scikit-learn's 8x8 digits: dfq's embedded, offline default teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dfq.io import save_torch

log = logging.getLogger(__name__)
SHIPPED = Path(__file__).parent / "weights"  # trained teachers that ship with dfq, by checkpoint name
TRAINING_DEFAULTS = {"epochs": 40, "lr": 0.05, "batch_size": 64, "seed": 0}  # train_teacher's own


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
    epochs: int = TRAINING_DEFAULTS["epochs"],
    lr: float = TRAINING_DEFAULTS["lr"],
    batch_size: int = TRAINING_DEFAULTS["batch_size"],
    seed: int = TRAINING_DEFAULTS["seed"],
) -> nn.Module:
    """Train `model` with SGD + cosine on `train_set` and cache its state dict at `path`.

    How the embedded default's teacher was made (dfq ships the result, see `shipped_or_trained`).
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


def shipped_or_trained(
    model: nn.Module, train_set: torch.utils.data.Dataset, path: str | Path, **options: object
) -> nn.Module:
    """The shipped teacher of this checkpoint's name, where it was trained with these `options` (the
    embedded default's 32-pixel digits CNN), copied to `path`; any other is trained (`train_teacher`).

    Training on first use gave each CPU a slightly different teacher (float kernels differ), and with
    it different W4A4 accuracies; shipping the weights makes the default run the same network everywhere.
    """
    shipped = SHIPPED / Path(path).name
    blob = torch.load(shipped, weights_only=True) if shipped.is_file() else {}
    if blob.get("recipe") != {**TRAINING_DEFAULTS, **options}:
        return train_teacher(model, train_set, path, **options)
    log.info("using the shipped teacher %s, cached at %s", shipped.name, path)
    save_torch(blob, path)
    return model
