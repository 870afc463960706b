"""BNS data-similarity score: how close a data set is to a model's training data, judged by the model.

For every BatchNorm layer, the KL divergence KL(N(mu_run, var_run) || N(mu_data, var_data)) of The
Knowledge Within (Haroush et al., CVPR 2020), summed over channels; the score is its mean over layers
(lower: closer to the training data). The data statistics at each layer's input are computed over the
whole data set (exact, float64 sums over every batch), not averaged over batches, so the score does
not depend on the batch size. Python API `batchnorm_similarity`; command line `python -m dfq.similarity`
(dfq/similarity.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dfq.errors import UserError
from dfq.models.normalization import Normalization
from dfq.synthesis.bn_stats import BatchNormStatistics, LayerStatistics
from dfq.synthesis.losses import bn_kl_divergence


@dataclass
class SimilarityScore:
    """The mean per-layer BNS divergence of a data set, and each layer's value (summed over channels)."""

    mean: float
    per_layer: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0

    def table(self) -> str:
        """Per-layer breakdown as aligned text, the mean last."""
        width = max([len(name) for name in self.per_layer] + [10])
        lines = [f"{name:<{width}}  {value:12.4f}" for name, value in self.per_layer.items()]
        return "\n".join([*lines, f"{'mean':<{width}}  {self.mean:12.4f}  ({self.num_samples} samples)"])


class RunningMoments:
    """Per-channel sums of x and x^2 over every sample and position seen, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | float = 0.0
        self.squares: torch.Tensor | float = 0.0

    def add(self, layer: LayerStatistics) -> None:
        """Fold in one batch's per-channel mean/variance (taken over `layer.elements` values)."""
        mean, var, elements = layer.batch_mean.double(), layer.batch_var.double(), layer.elements
        self.count += elements
        self.total = self.total + mean * elements
        self.squares = self.squares + (var + mean**2) * elements

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        return mean, (self.squares / self.count - mean**2).clamp_min(0)


def as_dataset(data: torch.Tensor | Dataset) -> Dataset:
    return TensorDataset(data) if isinstance(data, torch.Tensor) else data


@torch.no_grad()
def batchnorm_similarity(
    model: nn.Module, data: torch.Tensor | Dataset, batch_size: int = 256, model_name: str = "model"
) -> SimilarityScore:
    """Score `data` (a tensor of normalized inputs, or a data set whose items start with one) against
    `model`'s BN running statistics; raises NoBatchNormError for a model without BatchNorm."""
    recorder = BatchNormStatistics(model, model_name)
    was_training = model.training
    model.eval()
    moments: dict[str, RunningMoments] = {}
    reference: dict[str, LayerStatistics] = {}
    count = 0
    try:
        with recorder:
            for batch in DataLoader(as_dataset(data), batch_size=batch_size):
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                recorder.clear()
                model(x)
                count += len(x)
                for layer in recorder.layers:
                    moments.setdefault(layer.name, RunningMoments()).add(layer)
                    reference.setdefault(layer.name, layer)
    finally:
        model.train(was_training)
    if not count:
        raise UserError("the data set to score is empty")
    per_layer = {name: _layer_divergence(reference[name], m) for name, m in moments.items()}
    return SimilarityScore(sum(per_layer.values()) / len(per_layer), per_layer, count)


def _layer_divergence(layer: LayerStatistics, moments: RunningMoments) -> float:
    mean, var = moments.mean_var()
    stats = LayerStatistics(
        layer.name,
        mean,
        var,
        layer.running_mean.double(),
        layer.running_var.double(),
        layer.eps,
    )
    return float(bn_kl_divergence(stats))


def gaussian_noise(normalization: Normalization, count: int, seed: int) -> torch.Tensor:
    """N(0, 1) samples in the model's normalized input space, clamped to valid pixels (the baseline)."""
    noise = torch.randn((count, *normalization.shape), generator=torch.Generator().manual_seed(seed))
    return normalization.clamp_(noise)
