"""Top-1 accuracy of a model on a labelled split, and of an exported quantized checkpoint (library; the
command line `python -m dfq.evaluate` lives in `dfq.evaluate.cli`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dfq.progress import Progress


@torch.no_grad()
def top1(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Percentage of samples whose highest logit is the label (model left in eval mode)."""
    model.eval()
    correct = total = 0
    loader = DataLoader(dataset, batch_size=batch_size)
    with Progress(len(loader), "evaluation") as progress:
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
            progress.update()
    return 100.0 * correct / max(total, 1)


def load_export(
    checkpoint: str | Path, model: str, dataset: str, overrides: list[str] | None = None
) -> tuple[nn.Module, Dataset]:
    """The quantized network rebuilt from an export, and the test split of a `dataset` config option.

    The float architecture comes from the `model` config option (its weights are not needed), the
    quantized weights and encodings from `checkpoint` (see dfq.quant.export).
    """
    import hydra

    from dfq.config import compose_config
    from dfq.models.load import normalization_from
    from dfq.quant.export import load_quantized

    cfg = compose_config([f"model={model}", f"dataset={dataset}", *(overrides or [])])
    normalization = normalization_from(cfg.model.input)
    network = load_quantized(hydra.utils.instantiate(cfg.model.arch), checkpoint)
    return network, hydra.utils.instantiate(cfg.dataset).split("test", normalization)


def evaluate_export(
    checkpoint: str | Path,
    model: str,
    dataset: str,
    overrides: list[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
) -> tuple[float, int]:
    """Top-1 % of an exported quantized checkpoint on (the first `max_samples` of) the test split."""
    from torch.utils.data import Subset

    network, test = load_export(checkpoint, model, dataset, overrides)
    if max_samples:
        test = Subset(test, range(min(max_samples, len(test))))
    return top1(network, test, batch_size), len(test)
