"""Shared fixtures: tiny BatchNorm networks, a trained digits teacher, and the optional ../shared data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from dfq.models.load import ModelEntry, freeze
from dfq.models.normalization import Normalization

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DFQ_SHARED", REPO.parent / "shared"))

torch.set_num_threads(1)  # tests are tiny; more threads only contend on a shared CPU


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (CIFAR-10 archives, pretrained ResNets); skipped where absent."""
    if not (SHARED / "models" / "cifar10").is_dir():
        pytest.skip(f"needs the shared data folder at {SHARED} (CIFAR-10 and pretrained ResNets); absent")
    return SHARED


def load_script(name: str) -> ModuleType:
    """A script of scripts/ imported as a module, so a test can call its `main`."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyBNNet(nn.Module):
    """Two conv-BN-ReLU layers and a linear head on 3x8x8 inputs: a network small enough for unit tests."""

    def __init__(self, num_classes: int = 4, batchnorm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else lambda c: nn.Identity()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=not batchnorm)
        self.bn1 = norm(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=not batchnorm)
        self.bn2 = norm(8)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


TINY_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=8, num_classes=4)


def make_tiny_entry(batchnorm: bool = True, seed: int = 0) -> ModelEntry:
    """A frozen tiny network whose BN running statistics are non-trivial (set from random data)."""
    torch.manual_seed(seed)
    model = TinyBNNet(batchnorm=batchnorm)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 3, 8, 8) * 0.7 + 0.3)
    return ModelEntry("tiny_bn" if batchnorm else "tiny_no_bn", freeze(model), TINY_NORMALIZATION)


@pytest.fixture
def tiny_entry() -> ModelEntry:
    return make_tiny_entry()


@pytest.fixture
def tiny_no_bn_entry() -> ModelEntry:
    return make_tiny_entry(batchnorm=False)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> tuple[ModelEntry, object]:
    """A DigitsCNN trained for a few epochs on 8x8 digits (about 98 % test top-1), and its data set."""
    from dfq.data.digits import DigitsDataset
    from dfq.models.digits import DigitsCNN, train_teacher

    normalization = Normalization(mean=(0.3,), std=(0.4,), image_size=8, num_classes=10)
    data = DigitsDataset(image_size=8)
    torch.manual_seed(0)
    model = DigitsCNN(widths=(16, 32, 32))
    path = tmp_path_factory.mktemp("teacher") / "digits.pt"
    train_teacher(model, data.split("train", normalization), path, epochs=15)
    return ModelEntry("digits_cnn", freeze(model), normalization), data
