"""Post-training calibration: observers see the samples, then every quantizer's range is fixed.

Options: BN re-estimation on the quantized student (its BatchNorm statistics recomputed from the
samples as the student now computes them, then ranges re-observed) and bias correction of the weight
quantization error (Nagel et al., ICCV 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.progress import Progress
from dfq.quant.bias_correction import correct_bias
from dfq.quant.bn import reestimate_batchnorm
from dfq.quant.prepare import quantizers
from dfq.ranges import check_ranges, ranged


@dataclass
class CalibrateConfig:
    """Post-training calibration: how many samples the observers see, in which batch size, and the
    optional corrections (BN folding into a copy, BN re-estimation, bias correction)."""

    num_samples: int | None = ranged(None, 1)  # None: every sample the generator made
    batch_size: int = ranged(128, 1)
    fold_bn: bool = False  # fold BN into the preceding conv before quantizing (and before QAT)
    bn_reestimate: bool = False  # recompute the student's BN statistics on the samples
    bias_correction: bool = False  # subtract the weights' expected quantization error (Nagel et al. 2019)

    def __post_init__(self) -> None:
        check_ranges(self, "calibrate")


@torch.no_grad()
def observe_ranges(student: nn.Module, samples: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Observe activations (float forward passes over `samples`) and weights, then freeze all ranges."""
    found = quantizers(student)  # none at all when every width is 16/32 bits: nothing to do
    student.eval()
    for quantizer in found.values():
        quantizer.observer.reset()
        quantizer.observing = True
    loader = DataLoader(TensorDataset(samples), batch_size=batch_size)
    try:
        with Progress(len(loader), "calibration") as progress:
            for (batch,) in loader:
                student(batch)  # weight quantizers observe their weight in the same pass
                progress.update()
    finally:
        for quantizer in found.values():
            quantizer.observing = False
    for quantizer in found.values():
        quantizer.freeze()
    return student


def calibrate(
    student: nn.Module,
    samples: torch.Tensor,
    batch_size: int = 128,
    bn_reestimate: bool = False,
    bias_correction: bool = False,
) -> nn.Module:
    """Fix every quantizer's range from `samples`; optionally re-estimate BN and correct biases first.

    Order: ranges -> BN re-estimation (needs quantized forward passes) -> bias correction (needs the
    weight ranges) -> ranges again, so activation ranges match the corrected network.
    """
    observe_ranges(student, samples, batch_size)
    if not (bn_reestimate or bias_correction):
        return student
    if bn_reestimate:
        reestimate_batchnorm(student, samples, batch_size)
    if bias_correction:
        correct_bias(student, samples, batch_size)
    return observe_ranges(student, samples, batch_size)
