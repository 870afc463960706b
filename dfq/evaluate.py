"""Top-1 accuracy of a model on a labelled split."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def top1(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Percentage of samples whose highest logit is the label (model left in eval mode)."""
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)
