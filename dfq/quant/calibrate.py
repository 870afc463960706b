"""Post-training calibration: observers see the samples, then every quantizer's range is fixed."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.quant.prepare import quantizers


@torch.no_grad()
def calibrate(student: nn.Module, samples: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Observe activations (float forward passes over `samples`) and weights, then freeze all ranges."""
    found = quantizers(student)  # none at all when every width is 16/32 bits: nothing to do
    student.eval()
    for quantizer in found.values():
        quantizer.observer.reset()
        quantizer.observing = True
    try:
        for (batch,) in DataLoader(TensorDataset(samples), batch_size=batch_size):
            student(batch)  # weight quantizers observe their weight in the same pass
    finally:
        for quantizer in found.values():
            quantizer.observing = False
    for quantizer in found.values():
        quantizer.freeze()
    return student
